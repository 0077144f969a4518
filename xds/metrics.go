package xds

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus series. They belong to one Server so tests (and a
// process running two servers) never share counters.
type metrics struct {
	connected    *prometheus.GaugeVec
	nacks        *prometheus.CounterVec
	pushes       *prometheus.CounterVec
	snapshotInfo *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_xds_connected_clients",
			Help: "ADS streams currently open, by node group.",
		}, []string{"group"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_xds_nacks_total",
			Help: "Configurations rejected by clients, by node group and resource type.",
		}, []string{"group", "type"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_xds_pushes_total",
			Help: "Discovery responses sent to clients, by node group.",
		}, []string{"group"}),
		snapshotInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_xds_snapshot_info",
			Help: "Always 1, labelled with the snapshot version currently served to each node group.",
		}, []string{"group", "version"}),
	}
	// Start the per-group series at zero so dashboards and alerts see them before the first
	// client connects.
	for _, group := range []string{GroupEnvoy, GroupRateLimit} {
		m.connected.WithLabelValues(group)
		m.pushes.WithLabelValues(group)
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.nacks, m.pushes, m.snapshotInfo)
	}
	return m
}

// setSnapshotVersion moves a group's info series from its previous version to the new one.
func (m *metrics) setSnapshotVersion(group, previous, version string) {
	if previous != "" && previous != version {
		m.snapshotInfo.DeleteLabelValues(group, previous)
	}
	m.snapshotInfo.WithLabelValues(group, version).Set(1)
}
