package xds

import (
	"crypto/sha256"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// inspectionCache remembers, by content, what checking a resource and its packed configs
// found, so a publish re-inspects only what changed since the one before. Reloads mostly
// change a little of a large configuration (a limit, one model): with 10,000 routes, decoding,
// validating and walking every route's packed per-filter config again dominated Publish.
//
// Results are keyed by the exact bytes inspected, and inspecting is a pure function of those
// bytes, so a hit is the same answer a fresh inspection would give. The cache holds what the
// current and the previous publish used, never more: entries a publish does not touch are
// dropped at the next rotate.
//
// A nil *inspectionCache is valid and caches nothing. It is not safe for concurrent use:
// Server uses it under publishMu.
type inspectionCache struct {
	prevAny, nextAny           map[string]*anyInspection
	prevResource, nextResource map[[sha256.Size]byte]*resourceInspection
}

// anyInspection is what visiting one packed config found.
type anyInspection struct {
	// key is the config's bytes as the cache's map key (shared, not copied).
	key      string
	typeURL  string
	problems []string
	// decoded are the decoded configs (outermost first) if hasDecoded: they are kept only
	// where later checks read them, since they double the memory a configuration takes.
	decoded    []proto.Message
	hasDecoded bool
	canonical  bool
	// inner are the packed configs found inside this one.
	inner []*anyInspection
}

// resourceInspection is what checking one resource found, apart from its name.
type resourceInspection struct {
	// problems are unlabelled: collect prefixes them with the resource's kind and name.
	problems []string
	// packed are the decoded packed configs, outermost first.
	packed []proto.Message
	// encoded is the deterministic encoding of the resource's canonical form, for the version.
	encoded []byte
	// anys are the packed configs found directly in the resource, kept in the cache as long
	// as the resource is.
	anys []*anyInspection
}

func newInspectionCache() *inspectionCache {
	c := &inspectionCache{}
	c.rotate()
	c.rotate()
	return c
}

// rotate ends a publish: what it used becomes what the next one can reuse.
func (c *inspectionCache) rotate() {
	if c == nil {
		return
	}
	c.prevAny, c.nextAny = c.nextAny, make(map[string]*anyInspection, len(c.nextAny))
	c.prevResource, c.nextResource = c.nextResource, make(map[[sha256.Size]byte]*resourceInspection, len(c.nextResource))
}

// packedConfig returns what an earlier inspection of a found, or nil. With needDecoded, an
// inspection that did not keep the decoded configs does not count.
func (c *inspectionCache) packedConfig(a *anypb.Any, needDecoded bool) *anyInspection {
	if c == nil {
		return nil
	}
	// Indexing with string(bytes) does not copy the bytes.
	hit := c.nextAny[string(a.GetValue())]
	if hit == nil {
		hit = c.prevAny[string(a.GetValue())]
	}
	if hit == nil || hit.typeURL != a.GetTypeUrl() || (needDecoded && !hit.hasDecoded) {
		// The same bytes under another type are another config; the rare miss costs only time.
		return nil
	}
	c.keep(hit)
	return hit
}

// storePackedConfig records a fresh inspection of a.
func (c *inspectionCache) storePackedConfig(a *anypb.Any, found *anyInspection) {
	if c != nil {
		found.key = string(a.GetValue())
		c.nextAny[found.key] = found
	}
}

// keep carries found, and the packed configs inside it, over to the next publish.
func (c *inspectionCache) keep(found *anyInspection) {
	if _, ok := c.nextAny[found.key]; ok {
		return
	}
	c.nextAny[found.key] = found
	for _, in := range found.inner {
		c.keep(in)
	}
}

// resourceKey identifies a resource by its type and deterministic encoding.
func resourceKey(typ protoreflect.FullName, encoded []byte) [sha256.Size]byte {
	h := sha256.New()
	writeField(h, []byte(typ))
	writeField(h, encoded)
	var key [sha256.Size]byte
	h.Sum(key[:0])
	return key
}

// resource returns what an earlier inspection of the resource with this key found, or nil.
func (c *inspectionCache) resource(key [sha256.Size]byte) *resourceInspection {
	if c == nil {
		return nil
	}
	hit := c.nextResource[key]
	if hit == nil {
		if hit = c.prevResource[key]; hit != nil {
			c.nextResource[key] = hit
			for _, a := range hit.anys {
				c.keep(a)
			}
		}
	}
	return hit
}

func (c *inspectionCache) storeResource(key [sha256.Size]byte, found *resourceInspection) {
	if c != nil {
		c.nextResource[key] = found
	}
}

// inspectResource validates msg, inspects its packed configs and returns its canonical
// encoding; encoded is msg's deterministic encoding (nil if it could not be made). The decoded
// packed configs are returned only with keepPacked.
func inspectResource(msg proto.Message, encoded []byte, reach anyReach, cache *inspectionCache, keepPacked bool) *resourceInspection {
	found := &resourceInspection{encoded: encoded}
	if v, ok := msg.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			found.problems = append(found.problems, err.Error())
		}
	}
	pc := inspectPacked(msg, reach, cache, keepPacked)
	found.problems = append(found.problems, pc.problems...)
	found.packed = pc.decoded
	found.anys = pc.visited
	if !pc.canonical {
		hashed := proto.Clone(msg)
		canonicalize(hashed.ProtoReflect(), reach)
		b, err := marshalDeterministic(hashed)
		if err != nil {
			found.problems = append(found.problems, "cannot encode: "+err.Error())
		}
		found.encoded = b
	}
	return found
}
