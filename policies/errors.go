package policies

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one problem in a policy file, located by line and by field path
// (for example "quotas[2].limit") so an operator can find it without counting list items.
type FieldError struct {
	// File is the policy file name as given to Parse or Load.
	File string
	// Line is 1-based; 0 when the problem has no place in the file (for example an empty file).
	Line int
	// Path is the field path, empty for problems with the document as a whole.
	Path string
	// Message says what is wrong. It never contains a secret's value.
	Message string
}

// Error formats the problem as "file:line: path: message", leaving out the parts that are unknown.
func (e FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		if e.File != "" {
			b.WriteByte(':')
		} else {
			b.WriteString("line ")
		}
		b.WriteString(strconv.Itoa(e.Line))
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Errors is every problem found in one policy file. Parse reports all of them at once so an
// operator fixes a file in one round instead of one error per reload.
type Errors struct {
	// List is sorted by line, then path.
	List []FieldError
}

// Error joins the problems with newlines.
func (e *Errors) Error() string {
	lines := make([]string, len(e.List))
	for i, fe := range e.List {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

func (e *Errors) sort() {
	slices.SortStableFunc(e.List, func(a, b FieldError) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Path, b.Path))
	})
}

// joinPath appends a field name to a path.
func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// indexPath appends a list index to a path.
func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// parentPath strips the last field or index from a path; "" when there is no parent.
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}
