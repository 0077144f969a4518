package xds

import (
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// resumingCache lets a client that reconnects — to this process after a restart, or to
// another replica — keep running the version it already has, without a resend.
//
// go-control-plane answers the first request of every stream in full even when the request
// names the current version, because a new stream has no record of what the client holds.
// With content-hash versions the version alone says exactly what the client holds, so on the
// first request of a stream whose version matches the snapshot, the cache is told the client
// already knows the snapshot's resources and simply waits for the next change.
type resumingCache struct {
	cachev3.SnapshotCache
	groups nodeGroups
}

func (c resumingCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	if req.GetResponseNonce() == "" && req.GetVersionInfo() != "" && len(sub.ReturnedResources()) == 0 {
		if known := c.knownResources(req); known != nil {
			sub = resumedSubscription{Subscription: sub, returned: known}
		}
	}
	return c.SnapshotCache.CreateWatch(req, sub, out)
}

// knownResources returns the resources a client running req's version holds, or nil if that
// version is not the one served.
func (c resumingCache) knownResources(req *cachev3.Request) map[string]string {
	snap, err := c.GetSnapshot(c.groups.ID(req.GetNode()))
	if err != nil {
		return nil
	}
	version := snap.GetVersion(req.GetTypeUrl())
	if version != req.GetVersionInfo() {
		return nil
	}
	resources := snap.GetResourcesAndTTL(req.GetTypeUrl())
	known := make(map[string]string, len(resources))
	for name := range resources {
		known[name] = version
	}
	return known
}

// resumedSubscription is a stream's subscription with the resources the client already holds.
type resumedSubscription struct {
	cachev3.Subscription
	returned map[string]string
}

func (s resumedSubscription) ReturnedResources() map[string]string { return s.returned }
