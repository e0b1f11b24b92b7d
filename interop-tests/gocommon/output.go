package gocommon

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Result is the result line of both programs. The QoS fields are gopeer's (its QoS sink),
// OutOfOrder is golp2p's (its sink); the other program leaves them out.
type Result struct {
	Event        string   `json:"event"`
	Role         string   `json:"role"`
	Messages     int64    `json:"messages"`
	Bytes        int64    `json:"bytes"`
	Seconds      float64  `json:"seconds"`
	CPUSeconds   float64  `json:"cpu_seconds"`
	CPUUser      float64  `json:"cpu_user_seconds"`
	CPUSys       float64  `json:"cpu_sys_seconds"`
	Peers        int      `json:"peers,omitempty"`
	Peer         string   `json:"peer,omitempty"`
	P50Ms        *float64 `json:"p50_ms,omitempty"`
	P99Ms        *float64 `json:"p99_ms,omitempty"`
	IdleP50Ms    *float64 `json:"idle_p50_ms,omitempty"`
	IdleP99Ms    *float64 `json:"idle_p99_ms,omitempty"`
	LoadedP50Ms  *float64 `json:"loaded_p50_ms,omitempty"`
	LoadedP99Ms  *float64 `json:"loaded_p99_ms,omitempty"`
	Probes       int      `json:"probes,omitempty"`
	BulkMessages int64    `json:"bulk_messages,omitempty"`
	BulkBytes    int64    `json:"bulk_bytes,omitempty"`
	BulkSeconds  float64  `json:"bulk_seconds,omitempty"`
	OutOfOrder   *int64   `json:"out_of_order,omitempty"`
	Error        string   `json:"error,omitempty"`
}

// SetCPU fills the CPU fields of r with the CPU time used from start to end.
func (r *Result) SetCPU(start, end CPUTime) {
	r.CPUUser = end.User - start.User
	r.CPUSys = end.Sys - start.Sys
	r.CPUSeconds = r.CPUUser + r.CPUSys
}

// FloodResult is a flood's result line: sent messages (of size bytes) per peer, the seconds
// and the CPU time since start and startCPU (taken before the first send), the number of
// peers and the first peer's ID.
func FloodResult(sent int64, size int, start time.Time, startCPU CPUTime, peers int, peer string) Result {
	res := Result{
		Event:    "result",
		Role:     "flood",
		Messages: sent,
		Bytes:    sent * int64(size),
		Seconds:  time.Since(start).Seconds(),
		Peers:    peers,
		Peer:     peer,
	}
	res.SetCPU(startCPU, ReadCPU())
	return res
}

// Ready is the ready line. HexID is golp2p's (the 40-hex node ID beside the libp2p peer ID).
type Ready struct {
	Event  string `json:"event"`
	ID     string `json:"id"`
	HexID  string `json:"hex_id,omitempty"`
	Listen string `json:"listen"`
}

var stdoutMu sync.Mutex

// PrintJSON prints v as one JSON line on standard output (goroutine-safe).
func PrintJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	fmt.Fprintln(os.Stdout, string(b))
}

// Fail prints a result line of role with err, the line "<program>: error: <err>" on standard
// error, and exits 1.
func Fail(program, role string, err error) {
	PrintJSON(Result{Event: "result", Role: role, Error: err.Error()})
	fmt.Fprintf(os.Stderr, "%s: error: %v\n", program, err)
	os.Exit(1)
}
