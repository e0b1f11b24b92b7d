package gocommon

import (
	"math"
	"slices"
	"syscall"
	"time"
)

// CPUTime is this process's CPU time so far (getrusage RUSAGE_SELF), in seconds.
type CPUTime struct {
	User, Sys float64
}

// ReadCPU is the CPU time now (zero if getrusage fails).
func ReadCPU() CPUTime {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return CPUTime{}
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return CPUTime{User: tv(ru.Utime), Sys: tv(ru.Stime)}
}

// quantileMs is the nearest-rank q quantile of sorted latencies (ns), in ms; nil if none.
func quantileMs(sorted []int64, q float64) *float64 {
	if len(sorted) == 0 {
		return nil
	}
	rank := min(max(int(math.Ceil(float64(len(sorted))*q))-1, 0), len(sorted)-1)
	v := float64(sorted[rank]) / 1e6
	return &v
}

// Quantiles are the nearest-rank 0.50 and 0.99 quantiles of the latencies lat (ns, any
// order; lat is not changed), in ms; nil if there are none.
func Quantiles(lat []int64) (p50, p99 *float64) {
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	return quantileMs(sorted, 0.50), quantileMs(sorted, 0.99)
}

// Tally is what a sink counts of its data messages (send-drain and send-timeframe).
type Tally struct {
	Seen     int64  // data messages received, counted or not
	Got      int64  // counted data messages
	Seqs     SeqSet // the sequence numbers seen
	First    time.Time
	FirstCPU CPUTime
	Last     time.Time // the last counted message
	LastCPU  CPUTime   // send-drain: at completion
	Lat      []int64   // one-way latencies of the counted messages, ns
}

// Start records the arrival of the first data message at now; with duration > 0
// (send-timeframe) it calls windowEnd, on a goroutine of its own, once duration has passed.
func (t *Tally) Start(now time.Time, duration time.Duration, windowEnd func()) {
	t.First = now
	t.FirstCPU = ReadCPU()
	if duration > 0 {
		time.AfterFunc(duration, windowEnd)
	}
}

// InWindow tells whether a message that arrives at now is within duration of the first one
// (always so with duration 0, send-drain).
func (t *Tally) InWindow(now time.Time, duration time.Duration) bool {
	return duration == 0 || now.Sub(t.First) <= duration
}

// Count counts a data message that arrived at now and was sent at sent (Unix nanoseconds).
func (t *Tally) Count(now time.Time, sent int64) {
	t.Got++
	t.Last = now
	t.Lat = append(t.Lat, now.UnixNano()-sent)
}

// SinkResult is the result line of a sink whose peer is peer: the counted messages (of size
// bytes), the seconds from the first to the last (send-drain) or duration (send-timeframe),
// the CPU time over the same interval (send-timeframe: to the end of the window, taken from
// windowCPU if it is there, else now) and the latency quantiles.
func (t *Tally) SinkResult(peer string, size int, duration time.Duration, windowCPU <-chan CPUTime) Result {
	res := Result{
		Event:    "result",
		Role:     "sink",
		Messages: t.Got,
		Bytes:    t.Got * int64(size),
		Seconds:  t.Last.Sub(t.First).Seconds(),
		Peer:     peer,
	}
	if duration > 0 {
		res.Seconds = duration.Seconds()
		end := ReadCPU()
		select {
		case end = <-windowCPU:
		default:
		}
		res.SetCPU(t.FirstCPU, end)
	} else {
		res.SetCPU(t.FirstCPU, t.LastCPU)
	}
	res.P50Ms, res.P99Ms = Quantiles(t.Lat)
	return res
}
