// Command gopeer is a minimal CometBFT v0.38 P2P node for interop tests and benchmarks.
//
// It runs a p2p.Switch over a p2p.MultiplexTransport (SecretConnection + MConnection) with one
// reactor on one data channel (--channel, default 0x77, priority 5) that carries mempool `Txs`
// wrapper messages, the same wire format as CometBFT's mempool channel; with --probes it also
// has a probe channel (--probe-channel, default 0x78, priority 10). Roles:
//
//   - flood: dials every address of --dial (comma-separated), waits for --peers peers and sends
//     every message to all of them;
//   - sink: waits for one peer, receives and checks its messages, acknowledges;
//   - idle: accepts up to --max-inbound peers and does nothing with them (a memory probe).
//
// Messages: every data transaction starts with an 8-byte big-endian sequence number and an
// 8-byte big-endian send time (Unix nanoseconds, CLOCK_REALTIME, taken just before the send;
// both ends run on one machine, so the clocks agree) and is padded so that the encoded message
// (the `tendermint.mempool.Message{Txs{[tx]}}` wrapper) is exactly --size bytes. Two control
// transactions, shorter than any data transaction, travel on the data channel: "end" (flood ->
// sink: nothing more follows) and "ack" (sink -> flood: done, the result is final).
//
// Send-drain (the default): the flood sends --count messages from --concurrency goroutines
// (goroutine j sends sequence numbers j, j+N, j+2N, ... below --count). The sink checks the
// size of every message and, with --concurrency 1, that the sequence numbers arrive in order
// 0, 1, 2, ...; with a larger --concurrency (give the sink the flood's value) that every number
// below --count arrives exactly once. After the --count-th message it sends the ack, flushes
// and exits; the flood exits when the acks of all its peers have arrived.
//
// Send-timeframe (--duration D on both ends): the flood's goroutines send until D has passed
// since the first send (a send still blocked then completes), then the flood sends "end" to
// every peer. The sink counts only the messages that arrive within D of the first one (the
// sequence checks cover all of them; --count is ignored); later ones are in flight and are
// dropped uncounted without the receive delay. On "end" it acknowledges and reports; its
// seconds are D.
//
// Receive delay (--recv-delay D, sink): Receive sleeps D after every counted data message, on
// the peer's receive goroutine, so the delay back-pressures the connection (as a slow reactor
// does in CometBFT).
//
// QoS (--probes P on both ends, --role flood/sink): the flood sends P probes on the probe
// channel every --probe-interval with no other traffic (the idle phase), then starts one
// goroutine flooding --size messages on the data channel as fast as it can, and once that has
// queued 200 of them sends P more probes at the same interval (the loaded phase); then it
// stops the bulk, sends "end" and waits for the ack. A probe is a --probe-size message whose
// transaction is sequence number, send time and a phase byte (0 idle, 1 loaded). The sink
// acknowledges when "end" and all 2P probes have arrived, and reports probe latency per phase
// and the bulk rate (bulk bytes over its first-to-last bulk message).
//
// Idle (--role idle --max-inbound N): MaxNumInboundPeers is N; every change of the peer count
// prints a peers event. It runs until --timeout, then prints its result and exits.
//
// Standard output carries JSON lines only:
//
//	{"event":"ready","id":"<node id>","listen":"127.0.0.1:PORT"}
//	{"event":"peers","peers":K}                                   (idle role only)
//	{"event":"result","role":"sink","messages":N,"bytes":B,"seconds":T,"cpu_seconds":C,
//	 "cpu_user_seconds":U,"cpu_sys_seconds":S,"peer":"<id>","p50_ms":L50,"p99_ms":L99}
//
// The result's messages and bytes are per peer for a flood (bytes: messages x size; "peers"
// says how many), the counted ones for a sink. Its seconds run from the first received message
// to the last (sink drain), are D (sink timeframe), or run from the first send to the last ack
// (flood); cpu_seconds is the process's user+system CPU time (getrusage) over the same interval
// (sink timeframe: to the end of the window). p50_ms and p99_ms (sink) are the nearest-rank
// quantiles of the one-way latency (receive time - send time) of the counted messages. A QoS
// sink adds idle_p50_ms, idle_p99_ms, loaded_p50_ms, loaded_p99_ms, probes (per phase) and
// bulk_messages, bulk_bytes, bulk_seconds. A failure prints a result with "error" set and
// exits 1. Diagnostics go to standard error; the line "gopeer: exchange complete" there
// separates the exchange from the teardown (whichever side closes first, the other's Switch
// logs the EOF as an error).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/p2p/conn"
	mempl "github.com/cometbft/cometbft/proto/tendermint/mempool"
	"github.com/cometbft/cometbft/version"
)

// headerLen is the length of the sequence number and send time at the start of every data
// transaction and probe.
const headerLen = 16

// warmBulk is how many bulk messages the QoS flood queues before its loaded phase begins.
const warmBulk = 200

// ackTx is the transaction the sink sends back when it is done.
var ackTx = []byte("ack")

// endTx is the transaction the flood sends after its last message (timeframe and QoS).
var endTx = []byte("end")

// completeLine goes to stderr when the exchange is complete (sink: it is about to
// acknowledge; flood: the last acknowledgement arrived), so it precedes anything logged about
// the connection's end (e.g. the peer's EOF, logged as an error by the Switch).
const completeLine = "gopeer: exchange complete"

type options struct {
	listen        string
	dial          []string
	chainID       string
	moniker       string
	role          string
	channel       byte
	probeChannel  byte
	size          int
	count         int64
	concurrency   int
	recvDelay     time.Duration
	duration      time.Duration
	peers         int
	probes        int
	probeInterval time.Duration
	probeSize     int
	maxInbound    int
	unlimited     bool
	maxPacket     int
	flushTimeout  time.Duration
	nodeKey       string
	printID       bool
	timeout       time.Duration
	verbose       bool
}

func parseChannel(name, v string) (byte, error) {
	ch, err := strconv.ParseUint(v, 0, 8)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: %w", name, v, err)
	}
	return byte(ch), nil
}

func parseFlags() (*options, error) {
	o := &options{}
	var channel, probeChannel, dial string
	flag.StringVar(&o.listen, "listen", "", "listen address host:port (required unless --print-id)")
	flag.StringVar(&dial, "dial", "", "peers to dial: <id>@host:port, comma-separated (optional)")
	flag.StringVar(&o.chainID, "chain-id", "gopeer-chain", "network (chain ID) in our NodeInfo")
	flag.StringVar(&o.moniker, "moniker", "gopeer", "moniker in our NodeInfo")
	flag.StringVar(&o.role, "role", "sink", "flood, sink or idle")
	flag.StringVar(&channel, "channel", "0x77", "data channel ID (decimal or 0x-hex)")
	flag.StringVar(&probeChannel, "probe-channel", "0x78", "probe channel ID (with --probes)")
	flag.IntVar(&o.size, "size", 1024, "encoded message size in bytes (Txs wrapper included), at least 24")
	flag.Int64Var(&o.count, "count", 1000, "messages to flood / to expect (send-drain)")
	flag.IntVar(&o.concurrency, "concurrency", 1, "flood: sending goroutines; sink: the flood's value (1: in-order check)")
	flag.DurationVar(&o.recvDelay, "recv-delay", 0, "sink: sleep this long after every counted message")
	flag.DurationVar(&o.duration, "duration", 0, "send-timeframe: flood sends for this long, sink counts this long")
	flag.IntVar(&o.peers, "peers", 1, "flood: peers to wait for; every message goes to all")
	flag.IntVar(&o.probes, "probes", 0, "QoS mode: probes per phase (0: off)")
	flag.DurationVar(&o.probeInterval, "probe-interval", 5*time.Millisecond, "QoS: interval between probes")
	flag.IntVar(&o.probeSize, "probe-size", 200, "QoS: encoded probe size in bytes")
	flag.IntVar(&o.maxInbound, "max-inbound", 40, "max_num_inbound_peers")
	flag.BoolVar(&o.unlimited, "unlimited", false, "send_rate and recv_rate 1e9 B/s instead of CometBFT's 5 120 000")
	flag.IntVar(&o.maxPacket, "max-packet-payload", 1024, "max_packet_msg_payload_size")
	flag.DurationVar(&o.flushTimeout, "flush-throttle", 100*time.Millisecond, "flush_throttle_timeout")
	flag.StringVar(&o.nodeKey, "node-key", "", "node_key.json to load (created if missing); default: a fresh key")
	flag.BoolVar(&o.printID, "print-id", false, "print the node ID and exit")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long (idle: run this long)")
	flag.BoolVar(&o.verbose, "verbose", false, "log CometBFT at info level (default: errors only)")
	flag.Parse()

	var err error
	if o.channel, err = parseChannel("channel", channel); err != nil {
		return nil, err
	}
	if o.probeChannel, err = parseChannel("probe-channel", probeChannel); err != nil {
		return nil, err
	}
	if dial != "" {
		o.dial = strings.Split(dial, ",")
	}
	switch {
	case o.role != "flood" && o.role != "sink" && o.role != "idle":
		return nil, fmt.Errorf("--role must be flood, sink or idle, got %q", o.role)
	case o.size < 24:
		return nil, fmt.Errorf("--size must be at least 24, got %d", o.size)
	case o.count < 1:
		return nil, fmt.Errorf("--count must be at least 1, got %d", o.count)
	case o.concurrency < 1:
		return nil, fmt.Errorf("--concurrency must be at least 1, got %d", o.concurrency)
	case o.peers < 1:
		return nil, fmt.Errorf("--peers must be at least 1, got %d", o.peers)
	case o.probes > 0 && (o.probeSize < 24 || o.probeChannel == o.channel || o.probeInterval <= 0):
		return nil, errors.New("--probes needs --probe-size >= 24, a --probe-interval and a --probe-channel other than --channel")
	case o.probes > 0 && o.duration > 0:
		return nil, errors.New("--probes and --duration do not combine")
	case o.listen == "" && !o.printID:
		return nil, errors.New("--listen is required")
	}
	return o, nil
}

// uvarintLen is the length of x as a protobuf varint.
func uvarintLen(x int) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// wrappedLen is the encoded size of Message{Txs{[tx]}} for a tx of txLen bytes.
func wrappedLen(txLen int) int {
	inner := 1 + uvarintLen(txLen) + txLen
	return 1 + uvarintLen(inner) + inner
}

// txLenFor returns the transaction length whose wrapped message is exactly size bytes.
func txLenFor(size int) (int, error) {
	for l := size - 2; l > headerLen && l >= size-12; l-- {
		if wrappedLen(l) == size {
			return l, nil
		}
	}
	return 0, fmt.Errorf("no transaction length wraps to exactly %d bytes", size)
}

// cpuTime is this process's CPU time so far (getrusage RUSAGE_SELF), in seconds.
type cpuTime struct {
	user, sys float64
}

func readCPU() cpuTime {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuTime{}
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return cpuTime{user: tv(ru.Utime), sys: tv(ru.Stime)}
}

// setCPU fills the CPU fields of r with the CPU time used from start to end.
func setCPU(r *result, start, end cpuTime) {
	r.CPUUser = end.user - start.user
	r.CPUSys = end.sys - start.sys
	r.CPUSeconds = r.CPUUser + r.CPUSys
}

// nowNanos is the send/receive clock: Unix nanoseconds (CLOCK_REALTIME).
func nowNanos() int64 { return time.Now().UnixNano() }

// quantileMs is the nearest-rank q quantile of sorted latencies (ns), in ms; nil if none.
func quantileMs(sorted []int64, q float64) *float64 {
	if len(sorted) == 0 {
		return nil
	}
	rank := min(max(int(math.Ceil(float64(len(sorted))*q))-1, 0), len(sorted)-1)
	v := float64(sorted[rank]) / 1e6
	return &v
}

func sortedCopy(l []int64) []int64 {
	s := append([]int64(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

type result struct {
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
	Error        string   `json:"error,omitempty"`
}

var stdoutMu sync.Mutex

func printJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	fmt.Fprintln(os.Stdout, string(b))
}

// reactor is the flood/sink/idle reactor.
type reactor struct {
	p2p.BaseReactor

	o          *options
	txLen      int
	probeTxLen int

	peerUp chan p2p.Peer // every added peer (flood, sink), buffered
	acked  chan struct{} // flood: the acks of all peers arrived
	acks   atomic.Int64  // flood: acks so far
	ackers sync.Map      // flood: IDs of the peers that acknowledged (they may hang up)
	done   chan struct{} // sink: complete, or an error
	failed chan error    // a peer error before completion (buffered)
	once   sync.Once     // closes done
	stats  sinkStats     // sink counters, owned by the receive goroutine until done
	// received mirrors stats.got for other goroutines (progress in error messages).
	received atomic.Int64
	// windowCPU receives the CPU time at the end of the timeframe window (sink timeframe).
	windowCPU chan cpuTime

	peersMu sync.Mutex // idle: guards peerCount
	peerCnt int
}

type sinkStats struct {
	seen     int64    // data messages received, counted or not
	got      int64    // counted data messages
	seenSeqs []uint64 // concurrency > 1: bitset of the sequence numbers seen
	first    time.Time
	firstCPU cpuTime
	last     time.Time
	lastCPU  cpuTime
	lat      []int64 // ns, counted messages
	ended    bool    // "end" arrived
	probeLat [2][]int64
	bulkGot  int64
	bulkFrom time.Time
	bulkTo   time.Time
	err      error
}

func newReactor(o *options, txLen, probeTxLen int) *reactor {
	r := &reactor{
		o:          o,
		txLen:      txLen,
		probeTxLen: probeTxLen,
		peerUp:     make(chan p2p.Peer, o.peers+16),
		acked:      make(chan struct{}),
		done:       make(chan struct{}),
		failed:     make(chan error, 1),
		windowCPU:  make(chan cpuTime, 1),
	}
	r.BaseReactor = *p2p.NewBaseReactor("FloodSink", r)
	return r
}

// channelIDs are the channels we have (our NodeInfo's and the reactor's).
func (o *options) channelIDs() []byte {
	if o.probes > 0 {
		return []byte{o.channel, o.probeChannel}
	}
	return []byte{o.channel}
}

// GetChannels implements p2p.Reactor.
func (r *reactor) GetChannels() []*conn.ChannelDescriptor {
	ds := []*conn.ChannelDescriptor{{
		ID:                  r.o.channel,
		Priority:            5,
		SendQueueCapacity:   100,
		RecvMessageCapacity: 2 << 20,
		MessageType:         &mempl.Message{},
	}}
	if r.o.probes > 0 {
		ds = append(ds, &conn.ChannelDescriptor{
			ID:                  r.o.probeChannel,
			Priority:            10,
			SendQueueCapacity:   100,
			RecvMessageCapacity: 1 << 16,
			MessageType:         &mempl.Message{},
		})
	}
	return ds
}

func (r *reactor) peerCountChanged(delta int) {
	r.peersMu.Lock()
	defer r.peersMu.Unlock()
	r.peerCnt += delta
	printJSON(map[string]any{"event": "peers", "peers": r.peerCnt})
}

// AddPeer implements p2p.Reactor.
func (r *reactor) AddPeer(p p2p.Peer) {
	if r.o.role == "idle" {
		r.peerCountChanged(1)
		return
	}
	fmt.Fprintf(os.Stderr, "gopeer: peer up: %s (%s)\n", p.ID(), p.SocketAddr())
	select {
	case r.peerUp <- p:
	default:
	}
}

// RemovePeer implements p2p.Reactor.
func (r *reactor) RemovePeer(p p2p.Peer, reason interface{}) {
	if r.o.role == "idle" {
		r.peerCountChanged(-1)
		return
	}
	fmt.Fprintf(os.Stderr, "gopeer: peer down: %s: %v\n", p.ID(), reason)
	if _, done := r.ackers.Load(p.ID()); done {
		return // a sink that acknowledged is done and may exit
	}
	r.fail(fmt.Errorf("peer %s removed: %v", p.ID(), reason))
}

// fail reports a peer error without blocking (the first one wins).
func (r *reactor) fail(err error) {
	select {
	case r.failed <- err:
	default:
	}
}

// Receive implements p2p.Reactor. It runs on the peer's receive goroutine (one for all
// channels), so the sink's counters need no lock until done is closed.
func (r *reactor) Receive(e p2p.Envelope) {
	if r.o.role == "idle" {
		return
	}
	msg, ok := e.Message.(*mempl.Txs)
	if !ok || len(msg.Txs) != 1 {
		r.finish(fmt.Errorf("unexpected message %T on channel %#x", e.Message, e.ChannelID))
		return
	}
	tx := msg.Txs[0]
	if r.o.role == "flood" {
		if e.ChannelID != r.o.channel || !bytes.Equal(tx, ackTx) {
			r.fail(fmt.Errorf("unexpected message of %d bytes instead of the ack", len(tx)))
			return
		}
		if _, again := r.ackers.LoadOrStore(e.Src.ID(), true); again {
			r.fail(fmt.Errorf("second ack from peer %s", e.Src.ID()))
			return
		}
		if r.acks.Add(1) == int64(r.o.peers) {
			fmt.Fprintln(os.Stderr, completeLine)
			close(r.acked)
		}
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	now := time.Now()
	switch {
	case e.ChannelID == r.o.probeChannel && r.o.probes > 0:
		r.receiveProbe(tx, now)
	case e.ChannelID != r.o.channel:
		r.finish(fmt.Errorf("message on unexpected channel %#x", e.ChannelID))
		return
	case bytes.Equal(tx, endTx):
		if r.o.duration == 0 && r.o.probes == 0 {
			r.finish(errors.New("end marker in send-drain mode"))
			return
		}
		r.stats.ended = true
	case r.o.probes > 0:
		r.receiveBulk(tx, now)
	default:
		r.receiveData(tx, now)
	}
	if r.complete() {
		s := &r.stats
		if r.o.duration == 0 && r.o.probes == 0 {
			s.lastCPU = readCPU()
		}
		fmt.Fprintln(os.Stderr, completeLine)
		ack := &mempl.Txs{Txs: [][]byte{ackTx}}
		if !e.Src.Send(p2p.Envelope{ChannelID: r.o.channel, Message: ack}) {
			r.finish(errors.New("could not queue the acknowledgement"))
			return
		}
		r.finish(nil)
	}
}

// complete tells whether the sink has all it waits for.
func (r *reactor) complete() bool {
	s := &r.stats
	switch {
	case s.err != nil:
		return false
	case r.o.probes > 0:
		return s.ended && len(s.probeLat[0])+len(s.probeLat[1]) == 2*r.o.probes
	case r.o.duration > 0:
		return s.ended
	default:
		return s.got == r.o.count
	}
}

// header reads a transaction's sequence number and send time.
func header(tx []byte) (uint64, int64) {
	return binary.BigEndian.Uint64(tx[:8]), int64(binary.BigEndian.Uint64(tx[8:headerLen]))
}

func (r *reactor) receiveData(tx []byte, now time.Time) {
	s := &r.stats
	if len(tx) != r.txLen {
		r.finish(fmt.Errorf("message %d: transaction of %d bytes, expected %d", s.seen, len(tx), r.txLen))
		return
	}
	seq, sent := header(tx)
	if s.seen == 0 {
		s.first = now
		s.firstCPU = readCPU()
		if r.o.duration > 0 {
			time.AfterFunc(r.o.duration, func() { r.windowCPU <- readCPU() })
		}
	}
	if r.o.concurrency == 1 {
		if seq != uint64(s.seen) {
			r.finish(fmt.Errorf("message %d: sequence number %d (out of order or lost)", s.seen, seq))
			return
		}
	} else {
		if r.o.duration == 0 && seq >= uint64(r.o.count) {
			r.finish(fmt.Errorf("message %d: sequence number %d of %d", s.seen, seq, r.o.count))
			return
		}
		word, bit := seq/64, uint64(1)<<(seq%64)
		if word > uint64(s.seen)+uint64(r.o.count)+(1<<20) {
			r.finish(fmt.Errorf("message %d: implausible sequence number %d", s.seen, seq))
			return
		}
		for uint64(len(s.seenSeqs)) <= word {
			s.seenSeqs = append(s.seenSeqs, 0)
		}
		if s.seenSeqs[word]&bit != 0 {
			r.finish(fmt.Errorf("message %d: sequence number %d again", s.seen, seq))
			return
		}
		s.seenSeqs[word] |= bit
	}
	s.seen++
	if r.o.duration > 0 && now.Sub(s.first) > r.o.duration {
		return // in flight after the window: not counted, not delayed
	}
	s.got++
	r.received.Store(s.got)
	s.last = now
	s.lat = append(s.lat, now.UnixNano()-sent)
	if r.o.recvDelay > 0 {
		time.Sleep(r.o.recvDelay)
	}
}

func (r *reactor) receiveBulk(tx []byte, now time.Time) {
	s := &r.stats
	if len(tx) != r.txLen {
		r.finish(fmt.Errorf("bulk message of %d bytes, expected %d", len(tx), r.txLen))
		return
	}
	if s.bulkGot == 0 {
		s.bulkFrom = now
	}
	s.bulkGot++
	s.bulkTo = now
}

func (r *reactor) receiveProbe(tx []byte, now time.Time) {
	s := &r.stats
	if len(tx) != r.probeTxLen {
		r.finish(fmt.Errorf("probe of %d bytes, expected %d", len(tx), r.probeTxLen))
		return
	}
	_, sent := header(tx)
	phase := tx[headerLen]
	if phase > 1 || len(s.probeLat[phase]) >= r.o.probes {
		r.finish(fmt.Errorf("unexpected probe (phase %d)", phase))
		return
	}
	s.probeLat[phase] = append(s.probeLat[phase], now.UnixNano()-sent)
}

func (r *reactor) finish(err error) {
	r.once.Do(func() {
		r.stats.err = err
		close(r.done)
	})
}

func fail(role string, err error) {
	printJSON(result{Event: "result", Role: role, Error: err.Error()})
	fmt.Fprintf(os.Stderr, "gopeer: error: %v\n", err)
	os.Exit(1)
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopeer: %v\n", err)
		os.Exit(2)
	}

	var nodeKey *p2p.NodeKey
	if o.nodeKey != "" {
		nodeKey, err = p2p.LoadOrGenNodeKey(o.nodeKey)
		if err != nil {
			fail(o.role, fmt.Errorf("node key %s: %w", o.nodeKey, err))
		}
	} else {
		nodeKey = &p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}
	}
	if o.printID {
		fmt.Println(nodeKey.ID())
		return
	}
	if err := run(o, nodeKey); err != nil {
		fail(o.role, err)
	}
}

func run(o *options, nodeKey *p2p.NodeKey) error {
	txLen, err := txLenFor(o.size)
	if err != nil {
		return err
	}
	probeTxLen := 0
	if o.probes > 0 {
		if probeTxLen, err = txLenFor(o.probeSize); err != nil {
			return fmt.Errorf("--probe-size: %w", err)
		}
	}

	logger := log.NewTMLogger(log.NewSyncWriter(os.Stderr))
	if o.verbose {
		logger = log.NewFilter(logger, log.AllowInfo())
	} else {
		logger = log.NewFilter(logger, log.AllowError())
	}

	cfg := config.DefaultP2PConfig()
	cfg.ListenAddress = "tcp://" + o.listen
	cfg.MaxPacketMsgPayloadSize = o.maxPacket
	cfg.FlushThrottleTimeout = o.flushTimeout
	cfg.AllowDuplicateIP = true
	cfg.MaxNumInboundPeers = o.maxInbound
	if o.unlimited {
		cfg.SendRate = 1_000_000_000
		cfg.RecvRate = 1_000_000_000
	}

	r := newReactor(o, txLen, probeTxLen)
	nodeInfo := p2p.DefaultNodeInfo{
		ProtocolVersion: p2p.NewProtocolVersion(version.P2PProtocol, version.BlockProtocol, 0),
		DefaultNodeID:   nodeKey.ID(),
		ListenAddr:      o.listen,
		Network:         o.chainID,
		Version:         version.TMCoreSemVer,
		Channels:        o.channelIDs(),
		Moniker:         o.moniker,
	}
	if err := nodeInfo.Validate(); err != nil {
		return fmt.Errorf("our node info: %w", err)
	}

	transport := p2p.NewMultiplexTransport(nodeInfo, *nodeKey, p2p.MConnConfig(cfg))
	listenAddr, err := p2p.NewNetAddressString(p2p.IDAddressString(nodeKey.ID(), o.listen))
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	if err := transport.Listen(*listenAddr); err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}

	sw := p2p.NewSwitch(cfg, transport)
	sw.SetLogger(logger.With("module", "p2p"))
	sw.AddReactor("FLOODSINK", r)
	sw.SetNodeInfo(nodeInfo)
	sw.SetNodeKey(nodeKey)
	if err := sw.Start(); err != nil {
		return fmt.Errorf("starting the switch: %w", err)
	}
	defer func() { _ = sw.Stop() }()

	printJSON(map[string]string{"event": "ready", "id": string(nodeKey.ID()), "listen": o.listen})

	if o.role == "idle" {
		<-time.After(o.timeout)
		r.peersMu.Lock()
		n := r.peerCnt
		r.peersMu.Unlock()
		printJSON(result{Event: "result", Role: "idle", Peers: n})
		return nil
	}

	for _, d := range o.dial {
		addr, err := p2p.NewNetAddressString(d)
		if err != nil {
			return fmt.Errorf("--dial %q: %w", d, err)
		}
		if err := sw.DialPeerWithAddress(addr); err != nil {
			return fmt.Errorf("dialing %s: %w", d, err)
		}
	}

	deadline := time.After(o.timeout)
	want := 1
	if o.role == "flood" {
		want = o.peers
	}
	peers := make([]p2p.Peer, 0, want)
	for len(peers) < want {
		select {
		case p := <-r.peerUp:
			info, ok := p.NodeInfo().(p2p.DefaultNodeInfo)
			if !ok {
				return fmt.Errorf("peer %s without DefaultNodeInfo", p.ID())
			}
			for _, ch := range o.channelIDs() {
				if !info.HasChannel(ch) {
					return fmt.Errorf("peer %s does not have channel %#x", p.ID(), ch)
				}
			}
			peers = append(peers, p)
		case <-deadline:
			return fmt.Errorf("%d of %d peers connected within %s", len(peers), want, o.timeout)
		}
	}

	switch {
	case o.role == "flood" && o.probes > 0:
		return floodQoS(o, r, peers[0], deadline)
	case o.role == "flood":
		return flood(o, r, peers, deadline)
	default:
		return sink(o, r, peers[0], deadline)
	}
}

// send queues env on p, retrying while the queue is full.
func send(r *reactor, p p2p.Peer, env p2p.Envelope) error {
	for !p.Send(env) {
		if !p.IsRunning() {
			return fmt.Errorf("peer %s stopped", p.ID())
		}
		select {
		case err := <-r.failed:
			return err
		default:
		}
	}
	return nil
}

// newTx is a transaction of n bytes with a filler after the header.
func newTx(n int) []byte {
	tx := make([]byte, n)
	for i := headerLen; i < len(tx); i++ {
		tx[i] = byte(i)
	}
	return tx
}

// stamp writes the sequence number and the send time into tx.
func stamp(tx []byte, seq uint64) {
	binary.BigEndian.PutUint64(tx[:8], seq)
	binary.BigEndian.PutUint64(tx[8:headerLen], uint64(nowNanos()))
}

// sendAll sends one control transaction to every peer.
func sendAll(r *reactor, peers []p2p.Peer, tx []byte) error {
	for _, p := range peers {
		env := p2p.Envelope{ChannelID: r.o.channel, Message: &mempl.Txs{Txs: [][]byte{tx}}}
		if err := send(r, p, env); err != nil {
			return err
		}
	}
	return nil
}

// waitAcks waits for the acknowledgements of all peers.
func waitAcks(o *options, r *reactor, deadline <-chan time.Time) error {
	select {
	case <-r.acked:
		return nil
	case err := <-r.failed:
		return fmt.Errorf("waiting for the acknowledgements: %w", err)
	case <-deadline:
		return fmt.Errorf("only %d of %d acknowledgements within %s", r.acks.Load(), o.peers, o.timeout)
	}
}

func flood(o *options, r *reactor, peers []p2p.Peer, deadline <-chan time.Time) error {
	var stop atomic.Bool
	var sent atomic.Int64
	limit := uint64(o.count)
	start := time.Now()
	startCPU := readCPU()
	if o.duration > 0 {
		limit = ^uint64(0)
		t := time.AfterFunc(o.duration, func() { stop.Store(true) })
		defer t.Stop()
	}
	errs := make(chan error, o.concurrency)
	var wg sync.WaitGroup
	for j := 0; j < o.concurrency; j++ {
		wg.Add(1)
		go func(j int) {
			defer wg.Done()
			tx := newTx(r.txLen)
			msg := &mempl.Txs{Txs: [][]byte{tx}}
			for seq := uint64(j); seq < limit && !stop.Load(); seq += uint64(o.concurrency) {
				// Send marshals the message before it returns, so tx can be reused.
				stamp(tx, seq)
				for _, p := range peers {
					if err := send(r, p, p2p.Envelope{ChannelID: r.o.channel, Message: msg}); err != nil {
						stop.Store(true)
						errs <- fmt.Errorf("sender %d at sequence number %d: %w", j, seq, err)
						return
					}
				}
				sent.Add(1)
			}
		}(j)
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	if o.duration > 0 {
		if err := sendAll(r, peers, endTx); err != nil {
			return fmt.Errorf("sending the end marker: %w", err)
		}
	}
	if err := waitAcks(o, r, deadline); err != nil {
		return err
	}
	res := result{
		Event:    "result",
		Role:     "flood",
		Messages: sent.Load(),
		Bytes:    sent.Load() * int64(o.size),
		Seconds:  time.Since(start).Seconds(),
		Peers:    len(peers),
		Peer:     string(peers[0].ID()),
	}
	setCPU(&res, startCPU, readCPU())
	printJSON(res)
	return nil
}

// sendProbes sends o.probes probes of the given phase, one per o.probeInterval.
func sendProbes(o *options, r *reactor, p p2p.Peer, phase byte, seq *uint64) error {
	tx := newTx(r.probeTxLen)
	tx[headerLen] = phase
	msg := &mempl.Txs{Txs: [][]byte{tx}}
	ticker := time.NewTicker(o.probeInterval)
	defer ticker.Stop()
	for i := 0; i < o.probes; i++ {
		<-ticker.C
		stamp(tx, *seq)
		*seq++
		if err := send(r, p, p2p.Envelope{ChannelID: o.probeChannel, Message: msg}); err != nil {
			return fmt.Errorf("probe %d of phase %d: %w", i, phase, err)
		}
	}
	return nil
}

func floodQoS(o *options, r *reactor, p p2p.Peer, deadline <-chan time.Time) error {
	start := time.Now()
	startCPU := readCPU()
	var probeSeq uint64
	if err := sendProbes(o, r, p, 0, &probeSeq); err != nil {
		return err
	}
	var stop atomic.Bool
	var sent atomic.Int64
	warm := make(chan struct{})
	bulkErr := make(chan error, 1)
	go func() {
		defer close(bulkErr)
		tx := newTx(r.txLen)
		msg := &mempl.Txs{Txs: [][]byte{tx}}
		for seq := uint64(0); !stop.Load(); seq++ {
			stamp(tx, seq)
			if err := send(r, p, p2p.Envelope{ChannelID: o.channel, Message: msg}); err != nil {
				bulkErr <- fmt.Errorf("bulk message %d: %w", seq, err)
				if sent.Load() < warmBulk {
					close(warm)
				}
				return
			}
			if sent.Add(1) == warmBulk {
				close(warm)
			}
		}
	}()
	<-warm
	err := sendProbes(o, r, p, 1, &probeSeq)
	stop.Store(true)
	if bErr := <-bulkErr; bErr != nil {
		return bErr
	}
	if err != nil {
		return err
	}
	if err := sendAll(r, []p2p.Peer{p}, endTx); err != nil {
		return fmt.Errorf("sending the end marker: %w", err)
	}
	if err := waitAcks(o, r, deadline); err != nil {
		return err
	}
	res := result{
		Event:    "result",
		Role:     "flood",
		Messages: sent.Load(),
		Bytes:    sent.Load() * int64(o.size),
		Seconds:  time.Since(start).Seconds(),
		Peers:    1,
		Peer:     string(p.ID()),
		Probes:   o.probes,
	}
	setCPU(&res, startCPU, readCPU())
	printJSON(res)
	return nil
}

func sink(o *options, r *reactor, peer p2p.Peer, deadline <-chan time.Time) error {
	select {
	case <-r.done:
	case err := <-r.failed:
		// The receive goroutine may still be delivering; done wins if it is closed too.
		select {
		case <-r.done:
		default:
			return fmt.Errorf("after %d messages: %w", r.received.Load(), err)
		}
	case <-deadline:
		return fmt.Errorf("only %d messages within %s", r.received.Load(), o.timeout)
	}
	s := &r.stats
	if s.err != nil {
		return s.err
	}
	// Flush the acknowledgement before the connection closes.
	peer.FlushStop()
	res := result{
		Event:    "result",
		Role:     "sink",
		Messages: s.got,
		Bytes:    s.got * int64(o.size),
		Seconds:  s.last.Sub(s.first).Seconds(),
		Peer:     string(peer.ID()),
	}
	switch {
	case o.probes > 0:
		idle, loaded := sortedCopy(s.probeLat[0]), sortedCopy(s.probeLat[1])
		res.IdleP50Ms, res.IdleP99Ms = quantileMs(idle, 0.50), quantileMs(idle, 0.99)
		res.LoadedP50Ms, res.LoadedP99Ms = quantileMs(loaded, 0.50), quantileMs(loaded, 0.99)
		res.Probes = o.probes
		res.BulkMessages = s.bulkGot
		res.BulkBytes = s.bulkGot * int64(o.size)
		res.BulkSeconds = s.bulkTo.Sub(s.bulkFrom).Seconds()
		printJSON(res)
		return nil
	case o.duration > 0:
		res.Seconds = o.duration.Seconds()
		end := readCPU()
		select {
		case end = <-r.windowCPU:
		default:
		}
		setCPU(&res, s.firstCPU, end)
	default:
		setCPU(&res, s.firstCPU, s.lastCPU)
	}
	lat := sortedCopy(s.lat)
	res.P50Ms, res.P99Ms = quantileMs(lat, 0.50), quantileMs(lat, 0.99)
	printJSON(res)
	return nil
}
