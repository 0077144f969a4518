package xds

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// marshalDeterministic is the one encoding used for versions: map entries sorted, so equal
// content always gives equal bytes.
func marshalDeterministic(m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

const anyFullName = protoreflect.FullName("google.protobuf.Any")

// validator is implemented by every generated Envoy message (protoc-gen-validate).
type validator interface {
	ValidateAll() error
}

// packedConfigs is what walking one resource's packed (google.protobuf.Any) configs found.
// protoc-gen-validate stops at an Any, yet nearly everything that matters in a listener — the
// HTTP connection manager and its filters — is packed, so Check opens every Any it can decode.
type packedConfigs struct {
	// problems are packed configs that fail to decode or to validate.
	problems []string
	// decoded holds every packed config this binary knows the type of, outermost first,
	// when keepDecoded is set.
	decoded     []proto.Message
	keepDecoded bool
	// canonical is false if some packed config's bytes differ from its deterministic
	// marshalling (anypb.New does not sort maps): such a resource is hashed from a
	// canonical copy so its version cannot change between runs.
	canonical bool

	reach anyReach
	// cache, when not nil, answers for packed configs inspected before.
	cache *inspectionCache
	// visited are the packed configs met directly (not inside another packed config).
	visited []*anyInspection
}

func inspectPacked(m proto.Message, reach anyReach, cache *inspectionCache, keepDecoded bool) packedConfigs {
	pc := packedConfigs{canonical: true, reach: reach, cache: cache, keepDecoded: keepDecoded}
	pc.walk(m.ProtoReflect())
	return pc
}

func (pc *packedConfigs) walk(m protoreflect.Message) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		pc.visitAny(a)
		return
	}
	eachChildMessage(m, pc.reach, pc.walk)
}

// visitAny inspects one packed config, or reuses what inspecting the same bytes found before.
func (pc *packedConfigs) visitAny(a *anypb.Any) {
	found := pc.cache.packedConfig(a, pc.keepDecoded)
	if found == nil {
		sub := packedConfigs{canonical: true, reach: pc.reach, cache: pc.cache, keepDecoded: pc.keepDecoded}
		sub.inspectAny(a)
		found = &anyInspection{typeURL: a.GetTypeUrl(), problems: sub.problems, decoded: sub.decoded,
			hasDecoded: pc.keepDecoded, canonical: sub.canonical, inner: sub.visited}
		pc.cache.storePackedConfig(a, found)
	}
	pc.visited = append(pc.visited, found)
	pc.problems = append(pc.problems, found.problems...)
	if pc.keepDecoded {
		pc.decoded = append(pc.decoded, found.decoded...)
	}
	pc.canonical = pc.canonical && found.canonical
}

// inspectAny decodes, validates and walks one packed config, and checks that its bytes are
// canonical.
func (pc *packedConfigs) inspectAny(a *anypb.Any) {
	inner, err := a.UnmarshalNew()
	if errors.Is(err, protoregistry.NotFound) {
		// A type this binary does not link: Envoy is the only judge of it.
		return
	}
	name := typeName(a.GetTypeUrl())
	if err != nil {
		pc.problems = append(pc.problems, fmt.Sprintf("%s: cannot decode: %v", name, err))
		pc.canonical = false
		return
	}
	if pc.keepDecoded {
		pc.decoded = append(pc.decoded, inner)
	}
	if v, ok := inner.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			pc.problems = append(pc.problems, fmt.Sprintf("%s: %v", name, err))
		}
	}
	pc.walk(inner.ProtoReflect())
	if pc.canonical {
		b, err := marshalDeterministic(inner)
		pc.canonical = err == nil && bytes.Equal(b, a.GetValue())
	}
}

// canonicalize rewrites, in place, every packed config inside m to its deterministic
// marshalling, innermost first.
func canonicalize(m protoreflect.Message, reach anyReach) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		eachChildMessage(m, reach, func(child protoreflect.Message) { canonicalize(child, reach) })
		return
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		return
	}
	canonicalize(inner.ProtoReflect(), reach)
	if b, err := marshalDeterministic(inner); err == nil {
		a.Value = b
	}
}

// eachChildMessage calls fn for every set message-typed field, list element and map value of
// m whose type can hold a packed config; the rest cannot matter to a walk for Anys.
func eachChildMessage(m protoreflect.Message, reach anyReach, fn func(protoreflect.Message)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if mv := fd.MapValue().Message(); mv != nil && reach.canHold(mv) {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					fn(mv.Message())
					return true
				})
			}
		case fd.Message() == nil || !reach.canHold(fd.Message()):
		case fd.IsList():
			list := v.List()
			for i := range list.Len() {
				fn(list.Get(i).Message())
			}
		default:
			fn(v.Message())
		}
		return true
	})
}

// anyReach remembers which message types can hold a google.protobuf.Any somewhere inside,
// so walks skip the many subtrees (matchers, addresses, durations...) that cannot.
type anyReach map[protoreflect.FullName]bool

func (r anyReach) canHold(md protoreflect.MessageDescriptor) bool {
	name := md.FullName()
	if can, ok := r[name]; ok {
		return can
	}
	if name == anyFullName {
		r[name] = true
		return true
	}
	// Provisionally true so recursive types terminate; erring towards "can" only costs a walk.
	r[name] = true
	can := false
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		sub := fd.Message()
		if fd.IsMap() {
			sub = fd.MapValue().Message()
		}
		if sub != nil && r.canHold(sub) {
			can = true
			break
		}
	}
	r[name] = can
	return can
}

// typeName is a type URL without its "type.googleapis.com/" prefix.
func typeName(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
