package main

import (
	"cmp"
	"fmt"
	"math"
	"strings"
)

// A chart is a line-and-point plot with one x and one y axis, a title, a
// legend at the right and an optional note below the plot.
type chart struct {
	title    string
	subtitle string
	note     string
	x, y     axis
	series   []series
}

// An axis maps data values to the plot; log axes need min > 0. With ticks
// nil the ticks are chosen from the range.
type axis struct {
	label    string
	min, max float64
	log      bool
	ticks    []tick
	format   func(float64) string
}

type tick struct {
	v     float64
	label string
}

// A series is drawn as a line through its points (unless noLine), a marker
// on each point, and runs as small hollow dots (the single runs behind a
// median). label, if set, writes a text next to a point.
type series struct {
	name   string
	color  string
	dash   bool
	noLine bool
	points []point
	runs   []point
}

// A point's label goes at (dx, dy) pixels from it, 9 right and 9 up by
// default; left puts its end there instead of its start.
type point struct {
	x, y   float64
	label  string
	dx, dy float64
	left   bool
}

const (
	width      = 960
	plotLeft   = 90
	plotTop    = 64
	plotWidth  = 530
	plotHeight = 320
	legendLeft = plotLeft + plotWidth + 24
	fontFamily = "DejaVu Sans, Helvetica, Arial, sans-serif"
)

func (a axis) pos(v float64, length float64) float64 {
	if a.log {
		return (math.Log10(v) - math.Log10(a.min)) / (math.Log10(a.max) - math.Log10(a.min)) * length
	}
	return (v - a.min) / (a.max - a.min) * length
}

func (a axis) fmt(v float64) string {
	if a.format != nil {
		return a.format(v)
	}
	return human(v)
}

// autoTicks: 1-2-5 steps for log axes, about five round steps for linear ones.
func (a axis) autoTicks() []tick {
	if a.ticks != nil {
		return a.ticks
	}
	var out []tick
	if a.log {
		for e := math.Floor(math.Log10(a.min)); e <= math.Ceil(math.Log10(a.max)); e++ {
			for _, m := range []float64{1, 2, 5} {
				v := m * math.Pow(10, e)
				if v >= a.min*0.999 && v <= a.max*1.001 {
					out = append(out, tick{v, a.fmt(v)})
				}
			}
		}
		return out
	}
	raw := (a.max - a.min) / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	for v := math.Ceil(a.min/step) * step; v <= a.max+step*1e-9; v += step {
		out = append(out, tick{v, a.fmt(v)})
	}
	return out
}

// human writes 1,234,567 as "1.2M", 50,000 as "50k", 0.31 as "0.31".
func human(v float64) string {
	trim := func(s string) string {
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		return s
	}
	switch av := math.Abs(v); {
	case av >= 1e6:
		return trim(fmt.Sprintf("%.1f", v/1e6)) + "M"
	case av >= 1e3:
		return trim(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case av >= 10 || av == 0:
		return trim(fmt.Sprintf("%.0f", v))
	case av >= 1:
		return trim(fmt.Sprintf("%.1f", v))
	default:
		return trim(fmt.Sprintf("%.2f", v))
	}
}

func esc(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;")
	return r.Replace(s)
}

// svg renders c as a standalone SVG document.
func (c chart) svg() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	xp := func(v float64) float64 { return plotLeft + c.x.pos(v, plotWidth) }
	yp := func(v float64) float64 { return plotTop + plotHeight - c.y.pos(v, plotHeight) }

	notes := strings.Split(strings.TrimSpace(c.note), "\n")
	height := plotTop + plotHeight + 60 + 16*len(notes)
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="%s" font-size="13">`,
		width, height, width, height, fontFamily)
	p(`<rect width="100%%" height="100%%" fill="#ffffff"/>`)
	p(`<text x="%d" y="26" font-size="17" font-weight="bold">%s</text>`, plotLeft, esc(c.title))
	if c.subtitle != "" {
		p(`<text x="%d" y="46" fill="#555555">%s</text>`, plotLeft, esc(c.subtitle))
	}

	// Grid and ticks.
	for _, t := range c.y.autoTicks() {
		y := yp(t.v)
		p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3"/>`, plotLeft, y, plotLeft+plotWidth, y)
		p(`<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle" fill="#333333">%s</text>`, plotLeft-8, y, esc(t.label))
	}
	for _, t := range c.x.autoTicks() {
		x := xp(t.v)
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e3e3e3"/>`, x, plotTop, x, plotTop+plotHeight)
		p(`<text x="%.1f" y="%d" text-anchor="middle" fill="#333333">%s</text>`, x, plotTop+plotHeight+20, esc(t.label))
	}
	p(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333333"/>`, plotLeft, plotTop, plotWidth, plotHeight)

	// Axis labels.
	p(`<text x="%d" y="%d" text-anchor="middle">%s</text>`, plotLeft+plotWidth/2, plotTop+plotHeight+44, esc(c.x.label))
	p(`<text transform="translate(%d %d) rotate(-90)" text-anchor="middle">%s</text>`, 24, plotTop+plotHeight/2, esc(c.y.label))

	// Series.
	for _, s := range c.series {
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="7 5"`
		}
		for _, r := range s.runs {
			p(`<circle cx="%.1f" cy="%.1f" r="3" fill="none" stroke="%s" stroke-opacity="0.6"/>`, xp(r.x), yp(r.y), s.color)
		}
		if !s.noLine && len(s.points) > 1 {
			var pts []string
			for _, pt := range s.points {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xp(pt.x), yp(pt.y)))
			}
			p(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"%s/>`, strings.Join(pts, " "), s.color, dash)
		}
		for _, pt := range s.points {
			if !s.dash || pt.label != "" {
				p(`<circle cx="%.1f" cy="%.1f" r="5" fill="%s"/>`, xp(pt.x), yp(pt.y), s.color)
			}
			if pt.label != "" {
				dx, dy := cmp.Or(pt.dx, 9), cmp.Or(pt.dy, -9)
				anchor := "start"
				if pt.left {
					anchor = "end"
				}
				// A white outline first keeps the label readable over lines.
				x, y := xp(pt.x)+dx, yp(pt.y)+dy
				p(`<text x="%.1f" y="%.1f" text-anchor="%s" font-weight="bold" fill="#ffffff" stroke="#ffffff" stroke-width="5" stroke-linejoin="round">%s</text>`,
					x, y, anchor, esc(pt.label))
				p(`<text x="%.1f" y="%.1f" text-anchor="%s" font-weight="bold" fill="%s">%s</text>`, x, y, anchor, s.color, esc(pt.label))
			}
		}
	}

	// Legend.
	y := plotTop + 8
	for _, s := range c.series {
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="7 5"`
		}
		p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"%s/>`, legendLeft, y, legendLeft+28, y, s.color, dash)
		if !s.dash {
			p(`<circle cx="%d" cy="%d" r="5" fill="%s"/>`, legendLeft+14, y, s.color)
		}
		lines := strings.Split(s.name, "\n")
		for i, l := range lines {
			p(`<text x="%d" y="%d" dominant-baseline="middle">%s</text>`, legendLeft+36, y+i*16, esc(l))
		}
		y += 16*len(lines) + 12
	}
	if hasRuns(c.series) {
		p(`<circle cx="%d" cy="%d" r="3" fill="none" stroke="#555555"/>`, legendLeft+14, y)
		p(`<text x="%d" y="%d" dominant-baseline="middle">one run (filled: median of the runs)</text>`, legendLeft+36, y)
	}

	for i, l := range notes {
		if l != "" {
			p(`<text x="%d" y="%d" font-size="12" fill="#555555">%s</text>`, plotLeft, plotTop+plotHeight+68+i*16, esc(l))
		}
	}
	p(`</svg>`)
	return b.String()
}

func hasRuns(ss []series) bool {
	for _, s := range ss {
		if len(s.runs) > 0 {
			return true
		}
	}
	return false
}
