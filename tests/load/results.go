package main

import (
	"fmt"
	"slices"
	"time"
)

// Results are one run's figures, as -json writes them. Durations are in
// seconds or milliseconds, as their names say; sizes in bytes.
type Results struct {
	Scenario Scenario       `json:"scenario"`
	Started  time.Time      `json:"started"`
	Connect  ConnectFigures `json:"connect"`
	Ready    ReadyFigures   `json:"ready"`

	// Published is the messages sent while measuring; PublishedPerSecond
	// them over -duration, beside the rate asked for (0 for -window).
	Published          int64   `json:"published"`
	PublishedPerSecond float64 `json:"published_per_second"`
	TargetRate         float64 `json:"target_rate"`
	// Expected is every published message once for every connected
	// subscriber of its topic; Delivered the distinct ones that arrived;
	// Lost = Expected - Delivered; Duplicated the copies of a message a
	// subscriber had received already; Foreign the messages that were
	// none of the topic's publishers' (another client on the room).
	Expected   int64 `json:"expected"`
	Delivered  int64 `json:"delivered"`
	Lost       int64 `json:"lost"`
	Duplicated int64 `json:"duplicated"`
	Foreign    int64 `json:"foreign"`
	// DeliveriesPerSecond is Delivered over ActiveSeconds: from the
	// first publish to the last expected delivery, or to the end of
	// -drain when some never arrived.
	DeliveriesPerSecond float64 `json:"deliveries_per_second"`
	ActiveSeconds       float64 `json:"active_seconds"`
	// Latency is from the instant a message was due (open loop: its slot
	// in the schedule; window: when it was sent) to its arrival at a
	// subscriber, over every delivery.
	Latency LatencyFigures `json:"latency_ms"`
	// SendLag is how late the publishers were on their schedule: the
	// tool's own timer and socket delay, included in Latency.
	SendLag LatencyFigures `json:"send_lag_ms"`
	// LatencyFromSend is from the instant a message was handed to the
	// publisher's socket to its arrival: Latency without the publisher's
	// lateness. In a window run the two are the same.
	LatencyFromSend LatencyFigures `json:"latency_from_send_ms"`
	// WindowStalls counts the times a full window waited a second and
	// sent anyway (messages lost to the watcher).
	WindowStalls int64 `json:"window_stalls"`
	// Dropped counts the clients whose connection ended during the run,
	// with the first reason.
	Dropped     int64  `json:"dropped"`
	DropError   string `json:"drop_error,omitempty"`
	PublishErrs int    `json:"publish_errors"`

	Servers  []ServerFigures `json:"servers"`
	Tool     ToolFigures     `json:"tool"`
	Timeline []Sample        `json:"timeline"`
	// Outages are spans of the timeline, while publishing, whose
	// deliveries fell below a tenth of the run's median, and whether delivery came back (to half
	// the median) after each.
	Outages []Outage `json:"outages"`
	// Distribution is the latency histogram's non-empty buckets.
	Distribution []Bucket `json:"latency_distribution"`
}

// Scenario is the run's flags.
type Scenario struct {
	Target      string   `json:"target"`
	URLs        []string `json:"urls,omitempty"`
	Backplane   string   `json:"backplane"` // "" for -target url
	Routed      bool     `json:"routed"`
	Instances   int      `json:"instances"`
	Procs       int      `json:"procs,omitempty"`
	Topics      int      `json:"topics"`
	Subscribers int      `json:"subscribers_per_topic"`
	Publishers  int      `json:"publishers_per_topic"`
	Placement   string   `json:"placement"`
	Size        int      `json:"size"`
	Rate        float64  `json:"rate"`
	Window      int      `json:"window"`
	DurationS   float64  `json:"duration_s"`
	DrainS      float64  `json:"drain_s"`
	ConnectConc int      `json:"connect_concurrency"`
	Channel     string   `json:"channel,omitempty"`
}

// ConnectFigures are the connect phase's.
type ConnectFigures struct {
	Clients    int     `json:"clients"`
	Connected  int     `json:"connected"`
	Failed     int     `json:"failed"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`    // until every client had connected or failed
	PerSecond  float64 `json:"per_second"` // connected over Seconds
	P50Ms      float64 `json:"p50_ms"`     // one client's connect time
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
}

// ReadyFigures are the warm-up's: Missing counts the (publisher,
// subscriber) pairs whose probe never arrived.
type ReadyFigures struct {
	Seconds float64 `json:"seconds"`
	Missing int     `json:"missing"`
	Error   string  `json:"error,omitempty"`
}

// LatencyFigures are percentiles in milliseconds, each the upper bound of
// its histogram bucket (at most 3% above the exact value), and the
// exact max.
type LatencyFigures struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// ServerFigures are one server process's (with its children: the
// emulator's Lambda processes). CPU seconds count from its start;
// RunCPUSeconds from the first publish to the end of the drain. The
// start figures are taken after the warm-up, the end figures after the
// drain, with every client still connected; goroutines come from chat's
// -debug listener (-1: not available).
type ServerFigures struct {
	Name            string   `json:"name"`
	URL             string   `json:"url"`
	CPUSeconds      float64  `json:"cpu_seconds"`
	RunCPUSeconds   float64  `json:"run_cpu_seconds"`
	PeakRSSBytes    int64    `json:"peak_rss_bytes"`
	StartRSSBytes   int64    `json:"start_rss_bytes"`
	EndRSSBytes     int64    `json:"end_rss_bytes"`
	StartGoroutines int      `json:"start_goroutines"`
	EndGoroutines   int      `json:"end_goroutines"`
	LogProblems     int      `json:"log_problems"` // log lines at WARN or ERROR
	FirstProblems   []string `json:"first_problems,omitempty"`
	ExitError       string   `json:"exit_error,omitempty"`
}

// ToolFigures are the load tool's own.
type ToolFigures struct {
	CPUSeconds   float64 `json:"cpu_seconds"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
}

// Sample is one second of the run.
type Sample struct {
	T float64 `json:"t"` // seconds since the first publish
	// Publishing is true for a sample whose second lay within -duration,
	// false for those of the drain (and the one second that straddled
	// the end).
	Publishing       bool    `json:"publishing"`
	Deliveries       float64 `json:"deliveries_per_second"`
	Published        float64 `json:"published_per_second"`
	P50Ms            float64 `json:"p50_ms"`
	P99Ms            float64 `json:"p99_ms"`
	MaxMs            float64 `json:"max_ms"`
	Connected        int64   `json:"connected"`
	ServerRSSBytes   int64   `json:"server_rss_bytes"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
}

// Outage is a span of low delivery.
type Outage struct {
	FromS     float64 `json:"from_s"`
	ToS       float64 `json:"to_s"`
	Recovered bool    `json:"recovered"`
}

// Bucket is one latency bucket: Count deliveries at most UpperMs.
type Bucket struct {
	UpperMs float64 `json:"upper_ms"`
	Count   int64   `json:"count"`
}

// collect fills res from the ended run.
func (st *runState) collect(res *Results, expected int64, active time.Duration, atStart, atEnd []serverFigure) {
	cfg := st.cfg
	res.Expected = expected
	res.TargetRate = cfg.rate
	res.ActiveSeconds = active.Seconds()
	var lat, fromSend, lag snapshot
	for _, r := range st.subs {
		lat.add(&r.hist)
		fromSend.add(&r.fromSend)
		res.Delivered += r.deliveries.Load()
		res.Duplicated += r.dups.Load()
		res.Foreign += r.foreign.Load()
	}
	for _, p := range st.pubs {
		lag.add(&p.lag)
		res.Published += p.sent.Load()
		res.WindowStalls += p.stalls.Load()
		if p.writeErr != nil {
			res.PublishErrs++
		}
	}
	// Lost, counted per publisher and subscriber: a message counts once
	// for each subscriber that never got it.
	for _, tp := range st.topics {
		for _, r := range tp.subs {
			for k, p := range tp.pubs {
				res.Lost += r.missing(k, p.sent.Load())
			}
		}
	}
	res.PublishedPerSecond = float64(res.Published) / cfg.duration.Seconds()
	if active > 0 {
		res.DeliveriesPerSecond = float64(res.Delivered) / active.Seconds()
	}
	res.Latency = latencyOf(&lat)
	res.SendLag = latencyOf(&lag)
	res.LatencyFromSend = latencyOf(&fromSend)
	res.Dropped = st.dropped.Load()
	if st.dropErr != nil {
		res.DropError = st.dropErr.Error()
	}
	for i, s := range st.servers {
		s.mu.Lock()
		f := ServerFigures{
			Name: s.name, URL: s.url, CPUSeconds: s.cpu.Seconds(), RunCPUSeconds: (atEnd[i].cpu - atStart[i].cpu).Seconds(),
			PeakRSSBytes: s.peakRSS, StartRSSBytes: atStart[i].rss, EndRSSBytes: atEnd[i].rss,
			StartGoroutines: atStart[i].goroutines, EndGoroutines: atEnd[i].goroutines,
			LogProblems: s.problems, FirstProblems: slices.Clone(s.firstLogs),
		}
		s.mu.Unlock()
		if s.waitErr != nil {
			f.ExitError = s.waitErr.Error()
		}
		res.Servers = append(res.Servers, f)
	}
	res.Timeline = st.timeline
	res.Outages = outages(res.Timeline)
	for i, c := range lat.counts {
		if c > 0 {
			res.Distribution = append(res.Distribution, Bucket{UpperMs: ms(time.Duration(bucketUpper(i))), Count: c})
		}
	}
}

func latencyOf(s *snapshot) LatencyFigures {
	return LatencyFigures{
		Count: s.total, Mean: ms(s.mean()),
		P50: ms(s.quantile(0.5)), P90: ms(s.quantile(0.9)), P99: ms(s.quantile(0.99)), P999: ms(s.quantile(0.999)),
		Max: ms(time.Duration(s.max)),
	}
}

// outages finds the spans of the timeline below a tenth of the median
// deliveries per second, while publishing.
func outages(all []Sample) []Outage {
	var tl []Sample
	for _, s := range all {
		if s.Publishing {
			tl = append(tl, s)
		}
	}
	if len(tl) < 3 {
		return nil
	}
	rates := make([]float64, len(tl))
	for i, s := range tl {
		rates[i] = s.Deliveries
	}
	slices.Sort(rates)
	median := rates[len(rates)/2]
	if median == 0 {
		return nil
	}
	var out []Outage
	for i := 0; i < len(tl); i++ {
		if tl[i].Deliveries >= median/10 {
			continue
		}
		o := Outage{FromS: tl[i].T - 1}
		if i > 0 {
			o.FromS = tl[i-1].T
		}
		for i < len(tl) && tl[i].Deliveries < median/2 {
			i++
		}
		if i < len(tl) {
			o.Recovered = true
			o.ToS = tl[i].T - 1
			if i > 0 {
				o.ToS = tl[i-1].T
			}
		} else {
			o.ToS = tl[len(tl)-1].T
		}
		out = append(out, o)
	}
	return out
}

// problems lists what -strict fails a run for.
func (r *Results) problems() []string {
	var p []string
	if r.Lost > 0 {
		p = append(p, fmt.Sprintf("%d lost", r.Lost))
	}
	if r.Duplicated > 0 {
		p = append(p, fmt.Sprintf("%d duplicated", r.Duplicated))
	}
	if r.Connect.Failed > 0 {
		p = append(p, fmt.Sprintf("%d failed to connect", r.Connect.Failed))
	}
	if r.Dropped > 0 {
		p = append(p, fmt.Sprintf("%d dropped", r.Dropped))
	}
	if r.Ready.Missing > 0 {
		p = append(p, fmt.Sprintf("%d not ready after the warm-up", r.Ready.Missing))
	}
	return p
}

func scenarioOf(cfg *config) Scenario {
	backplane := cfg.backplane
	switch cfg.target {
	case "relay":
		backplane = "none"
	case "url":
		backplane = "" // the servers' own, unknown to the tool
	}
	return Scenario{
		Target: cfg.target, URLs: cfg.urls, Backplane: backplane, Routed: cfg.routed,
		Instances: cfg.instanceCount(), Topics: cfg.topics, Subscribers: cfg.subscribers, Publishers: cfg.publishers,
		Placement: cfg.placement, Size: cfg.size, Rate: cfg.rate, Window: cfg.window,
		DurationS: cfg.duration.Seconds(), DrainS: cfg.drain.Seconds(), ConnectConc: cfg.connectConc,
		Procs: map[bool]int{true: cfg.procs}[cfg.target == "lambda"],
	}
}

// ms returns d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
