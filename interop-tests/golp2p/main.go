// Command golp2p is a minimal CometBFT v0.40.0 lp2p node (libp2p over QUIC v1) for interop
// tests and benchmarks: the lp2p counterpart of interop-tests/gopeer (CometBFT v0.38's classic
// p2p). It takes gopeer's flags and prints gopeer's JSON lines for the roles flood and sink in
// send-drain and send-timeframe mode (one sink, or --peers sinks: broadcast), so a driver that
// runs gopeer can run it with only the binary path and the address format changed.
//
// Stack: an lp2p.Host (QUIC v1 only, listening on /ip4/HOST/udp/PORT/quic-v1 for --listen
// HOST:PORT) and an lp2p.Switch with one reactor (not CometBFT's mempool reactor) on one
// channel (--channel, default 0x77, priority 5, RecvMessageCapacity --size + 1 KiB) that
// carries mempool `Txs` wrapper messages (`tendermint.mempool.Message{Txs{[tx]}}`, as on the
// mempool channel). lp2p sends every message on a fresh QUIC stream of protocol
// /p2p/cometbft/1.0.0/channel/0xNN (uvarint length, then the message; the sender closes it).
// lp2p has no CometBFT handshake: --chain-id and --moniker only fill our own NodeInfo and are
// not checked against the peer's.
//
// Settings (the "maxed out" lp2p settings of CometBFT's own lp2p benchmark, lp2p/bench_test.go):
//
//   - resource limits mode "disabled" (--limits, default "disabled"; "default" is the
//     alternative): libp2p's resource manager is replaced by a null one, so the benchmark
//     measures the transport and the switch rather than the autoscaled default limits on
//     streams and memory, which a flood of one stream per message runs into;
//   - the reactor's receive worker pool scales between 64 and 128 workers (--min-workers,
//     --max-workers) with a 500 ms p90 latency threshold (--scaler-latency).
//
// Peers: every --dial entry `<peer id>@host:port` (comma-separated; the peer ID is the libp2p
// one, 12D3KooW...) is given to the host as a bootstrap peer (dialled as
// /ip4/host/udp/port/quic-v1), so the switch's Start connects it and adds it to its peer set,
// which tells the reactor (AddPeer). A node that is dialled provisions the dialler as a peer
// on the first inbound channel message (lp2p's Switch does that itself), so a sink needs no
// --dial. A flood waits for --peers peers and sends every message to all of them.
//
// Messages: every data transaction starts with an 8-byte big-endian sequence number and an
// 8-byte big-endian send time (Unix nanoseconds, CLOCK_REALTIME, taken just before the send;
// both ends run on one machine, so the clocks agree) and is padded so that the encoded message
// (the Txs wrapper) is exactly --size bytes. Two control transactions, shorter than any data
// transaction, travel on the data channel: "end" (flood -> sink: nothing more follows) and
// "ack" (sink -> flood: done, the result is final).
//
// Send-drain (the default): the flood sends --count messages from --concurrency goroutines
// (goroutine j sends sequence numbers j, j+N, j+2N, ... below --count); a send blocks until
// lp2p has written the message to its stream. The sink checks the size of every message and
// that every sequence number below --count arrives exactly once. Unlike gopeer it does not
// require order with --concurrency 1: lp2p delivers each message on its own stream and hands
// it to the reactor from a pool of workers, so messages overtake each other; the sink reports
// how many did (out_of_order). After the --count-th message it sends the ack and exits; the
// flood exits when the acks of all its peers have arrived.
//
// Send-timeframe (--duration D on both ends): the flood's goroutines send until D has passed
// since the first send (a send still blocked then completes), then the flood sends "end" to
// every peer. The sink counts only the messages that its reactor receives within D of the
// first one (the exactly-once check covers all of them; --count is ignored); later ones are
// dropped uncounted without the receive delay. As "end" can overtake data messages, the sink
// completes when "end" has arrived and its window has closed; then it acknowledges and
// reports; its seconds are D.
//
// Receive delay (--recv-delay D, sink): the reactor's Receive sleeps D after every counted
// data message. lp2p runs Receive on its worker pool, so up to --max-workers messages are
// delayed at once, and its receive queue is unbounded: the delay does not back-pressure the
// connection as it does with gopeer's MConnection.
//
// Acknowledgement: lp2p's send returns once the ack is written to a closed stream; it may
// still be in flight. So the sink waits, at most 3 s, for the flood to close the connection
// (a flood does so when it exits after the last ack) before it prints its result and exits.
//
// Accepted for gopeer compatibility and ignored (lp2p has no equivalent): --unlimited (lp2p
// has no rate limits), --max-packet-payload, --flush-throttle, --max-inbound, --probe-channel,
// --probe-interval, --probe-size. Not supported (an error): --role idle and --probes > 0.
// Only golp2p's: --limits, --min-workers, --max-workers, --scaler-latency (above).
// --print-id prints the libp2p peer ID.
//
// Standard output carries JSON lines only:
//
//	{"event":"ready","id":"<libp2p peer id>","hex_id":"<40-hex node id>","listen":"127.0.0.1:PORT"}
//	{"event":"result","role":"sink","messages":N,"bytes":B,"seconds":T,"cpu_seconds":C,
//	 "cpu_user_seconds":U,"cpu_sys_seconds":S,"peer":"<libp2p peer id>","p50_ms":L50,
//	 "p99_ms":L99,"out_of_order":R}
//
// "listen" is the UDP address of the QUIC listener. The ready line comes before the dials (a
// node with --dial) or once the switch accepts streams (one without). The result's messages and bytes are per peer
// for a flood (bytes: messages x size; "peers" says how many), the counted ones for a sink.
// Its seconds run from the first received message to the last (sink drain), are D (sink
// timeframe), or run from the first send to the last ack (flood); cpu_seconds is the
// process's user+system CPU time (getrusage) over the same interval (sink timeframe: to the
// end of the window). p50_ms and p99_ms (sink) are the nearest-rank quantiles of the one-way
// latency (receive time - send time) of the counted messages; out_of_order (sink) counts the
// counted messages whose sequence number is below one received before. A failure prints a
// result with "error" set and exits 1. Diagnostics go to standard error; the line
// "golp2p: exchange complete" there separates the exchange from the teardown.
//
// The parts shared with gopeer (the transaction layout and the Txs wrapper's size, the sink's
// sequence checks and counters, quantiles, CPU time, the JSON lines, the shared flags, the
// flood's senders and the acknowledgements) are in interop-tests/gocommon.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/lp2p"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/p2p/conn"
	mempl "github.com/cometbft/cometbft/proto/tendermint/mempool"
	"github.com/cometbft/cometbft/version"
	"github.com/p2p-interop-tests/gocommon"
)

// ackLinger bounds how long the sink waits for the flood to hang up after the ack.
const ackLinger = 3 * time.Second

// reactorName is the reactor's name in the switch (no scaler override matches it).
const reactorName = "FLOODSINK"

// fill is the filler multiplier of our transactions (gocommon.NewTx).
const fill = 7

// completeLine goes to stderr when the exchange is complete (sink: it is about to
// acknowledge; flood: the last acknowledgement arrived).
const completeLine = "golp2p: exchange complete"

type options struct {
	gocommon.Flags

	probes        int
	limits        string
	minWorkers    int
	maxWorkers    int
	scalerLatency time.Duration
}

func parseFlags() (*options, error) {
	o := &options{}
	o.Register(flag.CommandLine, "golp2p", gocommon.Usage{
		Listen:      "listen address host:port, UDP (required unless --print-id)",
		Dial:        "peers to dial: <libp2p peer id>@host:port, comma-separated (optional)",
		ChainID:     "network (chain ID) in our NodeInfo (not checked by lp2p)",
		Role:        "flood or sink",
		Concurrency: "flood: sending goroutines (sink: accepted, not needed)",
		PrintID:     "print the libp2p peer ID and exit",
		Timeout:     "give up after this long",
	})
	flag.StringVar(&o.limits, "limits", config.LibP2PLimitsModeDisabled, "libp2p resource limits mode: disabled or default")
	flag.IntVar(&o.minWorkers, "min-workers", 64, "reactor receive pool: minimum workers")
	flag.IntVar(&o.maxWorkers, "max-workers", 128, "reactor receive pool: maximum workers")
	flag.DurationVar(&o.scalerLatency, "scaler-latency", 500*time.Millisecond, "reactor receive pool: p90 latency threshold")
	// gopeer's flags without an lp2p meaning: accepted, ignored (--probes must stay 0).
	flag.IntVar(&o.probes, "probes", 0, "QoS mode: not supported (must be 0)")
	flag.Bool("unlimited", false, "ignored (lp2p has no rate limits)")
	flag.Int("max-packet-payload", 1024, "ignored (no MConnection)")
	flag.Duration("flush-throttle", 100*time.Millisecond, "ignored (no MConnection)")
	flag.Int("max-inbound", 40, "ignored (no idle role)")
	flag.String("probe-channel", "0x78", "ignored (no QoS mode)")
	flag.Duration("probe-interval", 5*time.Millisecond, "ignored (no QoS mode)")
	flag.Int("probe-size", 200, "ignored (no QoS mode)")
	if err := o.Parse(flag.CommandLine, os.Args[1:]); err != nil {
		return nil, err
	}

	switch {
	case flag.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments: %q", flag.Args())
	case o.Role == "idle":
		return nil, errors.New("--role idle is not supported by golp2p (use gopeer)")
	case o.Role != "flood" && o.Role != "sink":
		return nil, fmt.Errorf("--role must be flood or sink, got %q", o.Role)
	case o.probes != 0:
		return nil, errors.New("--probes (QoS mode) is not supported by golp2p (use gopeer)")
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	switch {
	case o.limits != config.LibP2PLimitsModeDisabled && o.limits != config.LibP2PLimitsModeDefault:
		return nil, fmt.Errorf("--limits must be disabled or default, got %q", o.limits)
	case o.minWorkers < 1 || o.maxWorkers < o.minWorkers:
		return nil, fmt.Errorf("need 1 <= --min-workers <= --max-workers, got %d and %d", o.minWorkers, o.maxWorkers)
	case o.Listen == "" && !o.PrintID:
		return nil, errors.New("--listen is required")
	}
	return o, nil
}

// sinkState is what the sink learns from its messages; guarded by reactor.mu.
type sinkState struct {
	gocommon.Tally // data messages

	outOfOrder   int64  // counted messages below the highest sequence number before them
	maxSeq       uint64 // highest sequence number so far (valid if Seen > 0)
	ended        bool   // "end" arrived
	windowClosed bool   // timeframe: D has passed since the first message
	done         bool   // complete or failed; nothing changes any more
	err          error
}

// reactor is the flood/sink reactor. lp2p calls Receive from many workers at once.
type reactor struct {
	p2p.BaseReactor

	o      *options
	txLen  int
	peerUp chan p2p.Peer // every added peer, buffered

	// flood
	acks   *gocommon.Acks
	failed chan error // the first peer error (buffered)

	// sink
	mu        sync.Mutex
	s         sinkState
	doneCh    chan struct{}         // closed when s.done is set
	windowCPU chan gocommon.CPUTime // timeframe: CPU time at the end of the window
}

func newReactor(o *options, txLen int) *reactor {
	r := &reactor{
		o:         o,
		txLen:     txLen,
		peerUp:    make(chan p2p.Peer, o.Peers+16),
		acks:      gocommon.NewAcks(o.Peers, completeLine),
		failed:    make(chan error, 1),
		doneCh:    make(chan struct{}),
		windowCPU: make(chan gocommon.CPUTime, 1),
	}
	r.BaseReactor = *p2p.NewBaseReactor("FloodSink", r)
	return r
}

// GetChannels implements p2p.Reactor.
func (r *reactor) GetChannels() []*conn.ChannelDescriptor {
	return []*conn.ChannelDescriptor{{
		ID:                  r.o.Channel,
		Priority:            5, // lp2p's receive queue takes priorities 1..10
		SendQueueCapacity:   100,
		RecvMessageCapacity: r.o.Size + 1024,
		MessageType:         &mempl.Message{},
	}}
}

// AddPeer implements p2p.Reactor.
func (r *reactor) AddPeer(p p2p.Peer) {
	fmt.Fprintf(os.Stderr, "golp2p: peer up: %s (%s)\n", p.ID(), p.SocketAddr())
	select {
	case r.peerUp <- p:
	default:
	}
}

// RemovePeer implements p2p.Reactor (lp2p calls it when it stops a peer for an error).
func (r *reactor) RemovePeer(p p2p.Peer, reason any) {
	fmt.Fprintf(os.Stderr, "golp2p: peer down: %s: %v\n", p.ID(), reason)
	if r.acks.From(string(p.ID())) {
		return // acknowledged: it is done and may hang up
	}
	r.fail(fmt.Errorf("peer %s removed: %v", p.ID(), reason))
}

// fail records a peer error without blocking (the first one wins).
func (r *reactor) fail(err error) {
	select {
	case r.failed <- err:
	default:
	}
	if r.o.Role == "sink" {
		r.finish(err)
	}
}

// finish ends the sink's exchange (err nil: complete).
func (r *reactor) finish(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finishLocked(err)
}

func (r *reactor) finishLocked(err error) {
	if r.s.done {
		return
	}
	r.s.done = true
	r.s.err = err
	close(r.doneCh)
}

// Receive implements p2p.Reactor.
func (r *reactor) Receive(e p2p.Envelope) {
	now := time.Now()
	msg, ok := e.Message.(*mempl.Txs)
	if !ok || len(msg.Txs) != 1 || e.ChannelID != r.o.Channel {
		r.fail(fmt.Errorf("unexpected message %T on channel %#x", e.Message, e.ChannelID))
		return
	}
	tx := msg.Txs[0]
	if r.o.Role == "flood" {
		if err := r.acks.Receive(string(e.Src.ID()), tx); err != nil {
			r.fail(err)
		}
		return
	}

	r.mu.Lock()
	s := &r.s
	if s.done {
		r.mu.Unlock()
		return
	}
	counted := false
	if bytes.Equal(tx, gocommon.EndTx) {
		if r.o.Duration == 0 {
			r.finishLocked(errors.New("end marker in send-drain mode"))
		}
		s.ended = true
	} else {
		counted = r.receiveData(tx, now)
	}
	if !s.done && r.complete() {
		if r.o.Duration == 0 {
			s.LastCPU = gocommon.ReadCPU()
		}
		r.finishLocked(nil)
	}
	r.mu.Unlock()

	if counted && r.o.RecvDelay > 0 {
		time.Sleep(r.o.RecvDelay)
	}
}

// complete tells whether the sink has all it waits for (r.mu held).
func (r *reactor) complete() bool {
	s := &r.s
	if r.o.Duration > 0 {
		return s.ended && (s.windowClosed || s.Seen == 0)
	}
	return s.Got == r.o.Count
}

// receiveData checks and counts one data transaction (r.mu held); it tells whether the
// message was counted.
func (r *reactor) receiveData(tx []byte, now time.Time) bool {
	s := &r.s
	if len(tx) != r.txLen {
		r.finishLocked(fmt.Errorf("message %d: transaction of %d bytes, expected %d", s.Seen, len(tx), r.txLen))
		return false
	}
	seq, sent := gocommon.Header(tx)
	count := r.o.Count // send-drain: every number is below it
	if r.o.Duration != 0 {
		count = 0
	}
	if err := s.Seqs.Add(seq, s.Seen, count, uint64(s.Seen)+(1<<24)); err != nil {
		r.finishLocked(err)
		return false
	}

	if s.Seen == 0 {
		s.Start(now, r.o.Duration, r.closeWindow)
	}
	below := s.Seen > 0 && seq < s.maxSeq
	if s.Seen == 0 || seq > s.maxSeq {
		s.maxSeq = seq
	}
	s.Seen++
	if s.windowClosed || !s.InWindow(now, r.o.Duration) {
		return false // after the window: not counted, not delayed
	}
	s.Count(now, sent)
	if below {
		s.outOfOrder++
	}
	return true
}

// closeWindow ends the timeframe window D after the first message.
func (r *reactor) closeWindow() {
	r.windowCPU <- gocommon.ReadCPU()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.s.windowClosed = true
	if !r.s.done && r.complete() {
		r.finishLocked(nil)
	}
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "golp2p: %v\n", err)
		os.Exit(2)
	}
	nodeKey := &p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}
	if o.NodeKey != "" {
		if nodeKey, err = p2p.LoadOrGenNodeKey(o.NodeKey); err != nil {
			gocommon.Fail("golp2p", o.Role, fmt.Errorf("node key %s: %w", o.NodeKey, err))
		}
	}
	if o.PrintID {
		id, err := lp2p.IDFromPrivateKey(nodeKey.PrivKey)
		if err != nil {
			gocommon.Fail("golp2p", o.Role, err)
		}
		fmt.Println(id.String())
		return
	}
	if err := run(o, nodeKey); err != nil {
		gocommon.Fail("golp2p", o.Role, err)
	}
}

// bootstrapPeers turns the --dial entries into lp2p bootstrap peers.
func bootstrapPeers(dial []string) ([]config.LibP2PBootstrapPeer, error) {
	var out []config.LibP2PBootstrapPeer
	for _, d := range dial {
		id, hostPort, ok := strings.Cut(strings.TrimSpace(d), "@")
		if !ok || id == "" || hostPort == "" {
			return nil, fmt.Errorf("--dial %q: want <libp2p peer id>@host:port", d)
		}
		if _, err := lp2p.AddrInfoFromHostAndID(hostPort, id); err != nil {
			return nil, fmt.Errorf("--dial %q: %w", d, err)
		}
		out = append(out, config.LibP2PBootstrapPeer{Host: hostPort, ID: id})
	}
	return out, nil
}

// listenAddr is host:port of the host's first QUIC listen address.
func listenAddr(h *lp2p.Host) (string, error) {
	for _, a := range h.Network().ListenAddresses() {
		// /ip4/127.0.0.1/udp/PORT/quic-v1
		parts := strings.Split(a.String(), "/")
		if len(parts) >= 5 && (parts[1] == "ip4" || parts[1] == "ip6") && parts[3] == "udp" {
			if parts[1] == "ip6" {
				return "[" + parts[2] + "]:" + parts[4], nil
			}
			return parts[2] + ":" + parts[4], nil
		}
	}
	return "", fmt.Errorf("no UDP listen address among %v", h.Network().ListenAddresses())
}

func run(o *options, nodeKey *p2p.NodeKey) error {
	txLen, ok := gocommon.TxLenFor(o.Size)
	if !ok {
		return fmt.Errorf("no transaction size encodes to exactly %d bytes", o.Size)
	}
	logger := log.NewTMLogger(log.NewSyncWriter(os.Stderr))
	if o.Verbose {
		logger = log.NewFilter(logger, log.AllowInfo())
	} else {
		logger = log.NewFilter(logger, log.AllowError())
	}

	bps, err := bootstrapPeers(o.Dial)
	if err != nil {
		return err
	}
	cfg := config.DefaultP2PConfig()
	cfg.ListenAddress = "tcp://" + o.Listen // lp2p turns it into /ip4/HOST/udp/PORT/quic-v1
	cfg.LibP2PConfig.Enabled = true
	cfg.LibP2PConfig.BootstrapPeers = bps
	cfg.LibP2PConfig.Limits = config.LibP2PLimits{Mode: o.limits}
	cfg.LibP2PConfig.Scaler = config.LibP2PScaler{
		MinWorkers:       o.minWorkers,
		MaxWorkers:       o.maxWorkers,
		ThresholdLatency: o.scalerLatency,
	}

	host, err := lp2p.NewHost(cfg, nodeKey.PrivKey, logger.With("module", "lp2p"))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.Listen, err)
	}
	defer func() { _ = host.Close() }()
	listen, err := listenAddr(host)
	if err != nil {
		return err
	}

	r := newReactor(o, txLen)
	nodeInfo := p2p.DefaultNodeInfo{
		ProtocolVersion: p2p.NewProtocolVersion(version.P2PProtocol, version.BlockProtocol, 0),
		DefaultNodeID:   nodeKey.ID(),
		ListenAddr:      listen,
		Network:         o.ChainID,
		Version:         version.TMCoreSemVer,
		Channels:        []byte{o.Channel},
		Moniker:         o.Moniker,
	}
	sw, err := lp2p.NewSwitch(nodeInfo, host, []lp2p.SwitchReactor{{Name: reactorName, Reactor: r}},
		p2p.NopMetrics(), logger.With("module", "p2p"))
	if err != nil {
		return fmt.Errorf("creating the switch: %w", err)
	}

	ready := gocommon.Ready{Event: "ready", ID: host.ID().String(), HexID: string(nodeKey.ID()), Listen: listen}
	deadline := time.After(o.Timeout)
	// Start connects the bootstrap peers (--dial) and adds them to the peer set; a failed
	// one is retried in the background. A node that dials says it is ready before it dials;
	// one that does not only once the switch is active (before that, lp2p resets inbound
	// streams, which would lose messages of a peer that dials it right away).
	if len(o.Dial) > 0 {
		gocommon.PrintJSON(ready)
	}
	if err := sw.Start(); err != nil {
		return fmt.Errorf("starting the switch: %w", err)
	}
	defer func() { _ = sw.Stop() }()
	if len(o.Dial) == 0 {
		gocommon.PrintJSON(ready)
	}

	want := 1
	if o.Role == "flood" {
		want = o.Peers
	}
	peers := make([]p2p.Peer, 0, want)
	for len(peers) < want {
		select {
		case p := <-r.peerUp:
			peers = append(peers, p)
		case err := <-r.failed:
			return err
		case <-deadline:
			return fmt.Errorf("%d of %d peers connected within %s", len(peers), want, o.Timeout)
		}
	}
	if o.Role == "flood" {
		return flood(o, r, peers, deadline)
	}
	return sink(o, r, host, peers[0], deadline)
}

// send sends env to p. lp2p's Send blocks until the message is written to its own stream;
// false is a lost message (no queue to retry on).
func send(r *reactor, p p2p.Peer, env p2p.Envelope) error {
	if !p.Send(env) {
		return fmt.Errorf("sending to peer %s failed (see the log)", p.ID())
	}
	select {
	case err := <-r.failed:
		return err
	default:
		return nil
	}
}

func flood(o *options, r *reactor, peers []p2p.Peer, deadline <-chan time.Time) error {
	start := time.Now()
	startCPU := gocommon.ReadCPU()
	sent, err := gocommon.Flood(o.Concurrency, o.Count, o.Duration, len(peers), r.txLen, fill,
		func(tx []byte) func(int) error {
			// Send marshals before it returns, so tx is reused.
			env := p2p.Envelope{ChannelID: o.Channel, Message: &mempl.Txs{Txs: [][]byte{tx}}}
			return func(i int) error { return send(r, peers[i], env) }
		})
	if err != nil {
		return err
	}
	if o.Duration > 0 {
		for _, p := range peers {
			env := p2p.Envelope{ChannelID: o.Channel, Message: &mempl.Txs{Txs: [][]byte{gocommon.EndTx}}}
			if err := send(r, p, env); err != nil {
				return fmt.Errorf("sending the end marker: %w", err)
			}
		}
	}
	if err := r.acks.Wait(r.failed, deadline, o.Timeout); err != nil {
		return err
	}
	gocommon.PrintJSON(gocommon.FloodResult(sent, o.Size, start, startCPU, len(peers), string(peers[0].ID())))
	return nil
}

func sink(o *options, r *reactor, host *lp2p.Host, peer p2p.Peer, deadline <-chan time.Time) error {
	select {
	case <-r.doneCh:
	case <-deadline:
		r.mu.Lock()
		got := r.s.Got
		r.mu.Unlock()
		return fmt.Errorf("only %d messages within %s", got, o.Timeout)
	}
	r.mu.Lock()
	s := r.s // done: nothing changes any more
	r.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	fmt.Fprintln(os.Stderr, completeLine)
	if !peer.Send(p2p.Envelope{ChannelID: o.Channel, Message: &mempl.Txs{Txs: [][]byte{gocommon.AckTx}}}) {
		return errors.New("could not send the acknowledgement")
	}
	// The ack may still be in flight: wait for the flood to hang up (it does once it has
	// all acks), at most ackLinger.
	if lp, ok := peer.(*lp2p.Peer); ok {
		for end := time.Now().Add(ackLinger); time.Now().Before(end); {
			if len(host.Network().ConnsToPeer(lp.AddrInfo().ID)) == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	res := s.SinkResult(string(peer.ID()), o.Size, o.Duration, r.windowCPU)
	res.OutOfOrder = &s.outOfOrder
	gocommon.PrintJSON(res)
	return nil
}
