package policies

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decoder turns a YAML node tree into Go values strictly. yaml's own strict mode stops at the
// first unknown field and reports type errors without a field path, so the structure (structs,
// lists, pointers) is walked here and only the leaves are handed to yaml. Walking the tree also
// records where each field sits, so later validation errors can point at a line.
type decoder struct {
	errs []FieldError
	// lines maps a field path to the line of its key (or list item).
	lines map[string]int
	// written holds the paths the file gave a non-null value, so defaults fill only what the
	// operator left out and an explicit "port: 0" is reported instead of silently replaced.
	written map[string]bool
	// fields caches yamlFields by type: a policy has thousands of structs of a few types.
	fields map[reflect.Type]map[string][]int
}

// newDecoder returns a decoder for the document under root. Its maps are sized from the
// document's node count up front: growing them while decoding a large policy cost more than
// the decoding itself.
func newDecoder(root *yaml.Node) *decoder {
	n := countNodes(root)
	return &decoder{
		lines:   make(map[string]int, n),
		written: make(map[string]bool, n),
		fields:  map[reflect.Type]map[string][]int{},
	}
}

// countNodes counts the nodes of a tree (aliases are not followed).
func countNodes(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	count := 1
	for _, c := range n.Content {
		count += countNodes(c)
	}
	return count
}

// fieldsOf returns the YAML keys a struct type accepts, computed once per type.
func (d *decoder) fieldsOf(t reflect.Type) map[string][]int {
	f, ok := d.fields[t]
	if !ok {
		f = yamlFields(t)
		d.fields[t] = f
	}
	return f
}

// nodeError lets a custom UnmarshalYAML report a problem below its own node (for example an
// unknown key inside apiKey) so the decoder can extend the field path instead of flattening it.
type nodeError struct {
	sub  string
	line int
	msg  string
}

// nodeErrors is what an UnmarshalYAML in this package returns for problems it can place.
type nodeErrors []nodeError

func (e nodeErrors) Error() string {
	msgs := make([]string, len(e))
	for i, ne := range e {
		msgs[i] = fmt.Sprintf("line %d: %s: %s", ne.line, ne.sub, ne.msg)
	}
	return strings.Join(msgs, "; ")
}

func (d *decoder) fail(line int, path, format string, args ...any) {
	d.errs = append(d.errs, FieldError{Line: line, Path: path, Message: fmt.Sprintf(format, args...)})
}

// maxAliasDepth bounds alias chains; the parser already refuses cycles, this is a second fence.
const maxAliasDepth = 64

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < maxAliasDepth; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// value decodes n into v (addressable) at path.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	n = resolveAlias(n)
	if n == nil || n.Kind == yaml.AliasNode {
		d.fail(0, path, "alias chain too deep")
		return
	}
	if isNull(n) {
		return
	}
	d.written[path] = true
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		d.leaf(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.mapping(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.value(n, v.Elem(), path)
	default:
		d.leaf(n, v, path)
	}
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n.Line, path, "must be a list, got %s", describe(n))
		return
	}
	v.Set(reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content)))
	for i, item := range n.Content {
		p := indexPath(path, i)
		d.lines[p] = item.Line
		d.value(item, v.Index(i), p)
	}
}

// mapping decodes a YAML mapping into a struct, reporting unknown and duplicate keys.
// Merge keys ("<<: *defaults") are honoured; keys written in the mapping itself win over merged ones.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "must be a mapping, got %s", describe(n))
		return
	}
	fields := d.fieldsOf(v.Type())
	seen := map[string]int{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if isMergeKey(key) {
			merges = append(merges, val)
			continue
		}
		d.field(key, val, v, fields, seen, path, true)
	}
	for _, m := range merges {
		d.merge(m, v, fields, seen, path, 0)
	}
}

func (d *decoder) merge(m *yaml.Node, v reflect.Value, fields map[string][]int, seen map[string]int, path string, depth int) {
	m = resolveAlias(m)
	switch {
	case m == nil || depth > 1:
		d.fail(0, path, "merge value must be a mapping or a list of mappings")
	case m.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(m.Content); i += 2 {
			key := m.Content[i]
			if isMergeKey(key) {
				d.merge(m.Content[i+1], v, fields, seen, path, depth+1)
				continue
			}
			d.field(key, m.Content[i+1], v, fields, seen, path, false)
		}
	case m.Kind == yaml.SequenceNode && depth == 0:
		for _, item := range m.Content {
			d.merge(item, v, fields, seen, path, depth+1)
		}
	default:
		d.fail(m.Line, path, "merge value must be a mapping or a list of mappings")
	}
}

// field decodes one key/value pair. explicit is false for keys that came in through a merge:
// those never count as duplicates, they are just overridden.
func (d *decoder) field(key, val *yaml.Node, v reflect.Value, fields map[string][]int, seen map[string]int, path string, explicit bool) {
	key = resolveAlias(key)
	if key == nil || key.Kind != yaml.ScalarNode {
		line := 0
		if key != nil {
			line = key.Line
		}
		d.fail(line, path, "keys must be plain strings")
		return
	}
	name := key.Value
	p := joinPath(path, name)
	if first, dup := seen[name]; dup {
		if explicit {
			d.fail(key.Line, p, "duplicate field %q (first at line %d)", name, first)
		}
		return
	}
	seen[name] = key.Line
	idx, ok := fields[name]
	if !ok {
		d.fail(key.Line, p, "unknown field %q", name)
		return
	}
	d.lines[p] = key.Line
	d.value(val, v.FieldByIndex(idx), p)
}

func isMergeKey(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && (n.Tag == "" || n.Tag == "!" || n.ShortTag() == "!!merge")
}

// leaf hands a scalar-like value to yaml, after refusing conversions yaml would do silently
// (it truncates 50.7 to 50 for integer fields).
func (d *decoder) leaf(n *yaml.Node, v reflect.Value, path string) {
	if msg := kindMismatch(n, v.Type()); msg != "" {
		d.fail(n.Line, path, "%s", msg)
		return
	}
	err := n.Decode(v.Addr().Interface())
	if err == nil {
		return
	}
	var nes nodeErrors
	var te *yaml.TypeError
	switch {
	case errors.As(err, &nes):
		for _, ne := range nes {
			d.fail(ne.line, joinPath(path, ne.sub), "%s", ne.msg)
		}
	case errors.As(err, &te):
		d.fail(n.Line, path, "%s", typeMessage(v.Type(), n))
	default:
		d.fail(n.Line, path, "%s", err.Error())
	}
}

// kindMismatch returns a message when a plain Go value cannot take this YAML node as written.
func kindMismatch(n *yaml.Node, t reflect.Type) string {
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return ""
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			return typeMessage(t, n)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			return typeMessage(t, n)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return typeMessage(t, n)
		}
	}
	return ""
}

func typeMessage(t reflect.Type, n *yaml.Node) string {
	want := "a " + t.String()
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		want = "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		want = "a non-negative integer"
	case reflect.Bool:
		want = "true or false"
	case reflect.String:
		want = "a string"
	}
	signed := t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64
	unsigned := t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64
	if (signed || unsigned) && n.Kind == yaml.ScalarNode && n.ShortTag() != "!!str" && isDecimal(n.Value) {
		if signed || !strings.HasPrefix(n.Value, "-") {
			// Digits refused by an integer field do not fit in it (yaml reads them as a float).
			return fmt.Sprintf("%s is out of range", describe(n))
		}
	}
	return fmt.Sprintf("must be %s, got %s", want, describe(n))
}

// describe names a node's value for an error message, shortening long scalars.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		const maxShown = 40
		s := n.Value
		if len(s) > maxShown {
			s = s[:maxShown] + "..."
		}
		return fmt.Sprintf("%q", s)
	}
	return "an unexpected node"
}

// yamlFields maps each YAML key a struct accepts to its field index, following inline fields.
func yamlFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("yaml")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int(nil), prefix...), i)
			if strings.Contains(","+opts+",", ",inline,") && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			out[name] = idx
		}
	}
	walk(t, nil)
	return out
}

// isDecimal reports whether s is an optionally signed run of decimal digits.
func isDecimal(s string) bool {
	s = strings.TrimLeft(s, "+-")
	return s != "" && strings.Trim(s, "0123456789") == ""
}
