package report

import (
	"errors"
	"image/color"
	"sort"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// systemColors tell the systems apart; p50 is drawn solid, p99 dashed in the same color.
func systemColors() []color.RGBA {
	return []color.RGBA{
		{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
		{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
		{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
		{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
		{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, // purple
		{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}, // brown
	}
}

// curve is one system's latency by offered rate: every fixed-rate run and every search step,
// failed ones included, so the curve shows where latency takes off. Where a search step and a
// fixed-rate run share a rate, the longer fixed-rate run is drawn.
func curve(s *System) (p50, p99 plotter.XYs) {
	type pt struct {
		rate     float64
		p50, p99 time.Duration
	}
	byRate := map[float64]pt{}
	for _, st := range s.Search {
		byRate[st.Result.Offered] = pt{st.Result.Offered, st.Result.P50, st.Result.P99}
	}
	for _, p := range s.Fixed {
		if p.Skipped == "" {
			byRate[p.Rate] = pt{p.Rate, p.Result.P50, p.Result.P99}
		}
	}
	pts := make([]pt, 0, len(byRate))
	for _, p := range byRate {
		pts = append(pts, p)
	}
	sort.Slice(pts, func(i, j int) bool { return pts[i].rate < pts[j].rate })
	for _, p := range pts {
		// The axis is logarithmic: a zero latency (no answers) cannot be drawn.
		if p.p50 <= 0 || p.p99 <= 0 {
			continue
		}
		p50 = append(p50, plotter.XY{X: p.rate, Y: float64(p.p50) / float64(time.Millisecond)})
		p99 = append(p99, plotter.XY{X: p.rate, Y: float64(p.p99) / float64(time.Millisecond)})
	}
	return p50, p99
}

// Plot saves a PNG of p50 and p99 latency against offered rate for every system.
func Plot(path string, systems []*System) error {
	p := plot.New()
	p.Title.Text = "Latency vs offered rate (open loop)"
	p.X.Label.Text = "offered rate (requests/s)"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.X.Tick.Marker = wholeTicks{}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	drawn := 0
	colors := systemColors()
	for i, s := range systems {
		p50, p99 := curve(s)
		if len(p50) == 0 {
			continue
		}
		c := colors[i%len(colors)]
		for _, series := range []struct {
			xys    plotter.XYs
			label  string
			dashed bool
		}{{p50, " p50", false}, {p99, " p99", true}} {
			line, points, err := plotter.NewLinePoints(series.xys)
			if err != nil {
				return err
			}
			line.Color = c
			line.Width = vg.Points(1.5)
			if series.dashed {
				line.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			}
			points.Color = c
			points.Shape = draw.CircleGlyph{}
			points.Radius = vg.Points(2)
			p.Add(line, points)
			p.Legend.Add(s.Key+series.label, line, points)
		}
		drawn++
	}
	if drawn == 0 {
		return errors.New("no latency data to plot")
	}
	return p.Save(9*vg.Inch, 5.5*vg.Inch, path)
}

// wholeTicks labels the rate axis with whole numbers instead of "1250.00".
type wholeTicks struct{}

func (wholeTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', 0, 64)
		}
	}
	return ticks
}
