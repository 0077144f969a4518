package xds

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"slices"
)

// versionLength is how many hex characters of the sha256 make a version: 64 bits, plenty to
// tell configurations apart, short enough to read in logs and Envoy's config dump.
const versionLength = 16

// encodedResource is one resource as it enters the version hash.
type encodedResource struct {
	typeURL, name string
	encoded       []byte
}

func encodedResources[T namedMessage](typeURL string, entries []entry[T]) []encodedResource {
	out := make([]encodedResource, len(entries))
	for i, e := range entries {
		out[i] = encodedResource{typeURL: typeURL, name: e.name, encoded: e.encoded}
	}
	return out
}

// contentVersion is the version of a group of resources: the sha256 of their deterministic
// encodings, sorted by type URL and then by name, so the order resources are given in never
// changes the version and identical content always yields the same one.
func contentVersion(groups ...[]encodedResource) string {
	all := slices.Concat(groups...)
	slices.SortFunc(all, func(a, b encodedResource) int {
		return cmp.Or(cmp.Compare(a.typeURL, b.typeURL), cmp.Compare(a.name, b.name))
	})

	h := sha256.New()
	for _, r := range all {
		// Length prefixes keep ("ab","c") and ("a","bc") apart.
		writeField(h, []byte(r.typeURL))
		writeField(h, []byte(r.name))
		writeField(h, r.encoded)
	}
	return hex.EncodeToString(h.Sum(nil))[:versionLength]
}

func writeField(h hash.Hash, b []byte) {
	h.Write(binary.AppendUvarint(nil, uint64(len(b))))
	h.Write(b)
}
