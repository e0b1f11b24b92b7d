// Command gopeer is a minimal CometBFT v0.38 P2P node for interop tests and benchmarks.
//
// It runs a p2p.Switch over a p2p.MultiplexTransport (SecretConnection + MConnection) with one
// reactor on one data channel (--channel, default 0x77, priority 5) that carries mempool `Txs`
// wrapper messages, the same wire format as CometBFT's mempool channel; with --probes it also
// has a probe channel (--probe-channel, default 0x78, priority 10). Roles:
//
//   - flood: dials every address of --dial (comma-separated; persistent peers, so the Switch
//     redials a failed dial), waits for --peers peers and sends every message to all of them;
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
// queued --warm-bulk of them (default 200) and a further --probe-settle has passed (default 0;
// a long link's slow start) sends P more probes at the same interval (the loaded phase); then it
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
//
// The parts shared with golp2p (the transaction layout and the Txs wrapper's size, the sink's
// sequence checks and counters, quantiles, CPU time, the JSON lines, the shared flags, the
// flood's senders and the acknowledgements) are in interop-tests/gocommon.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometbft/cometbft/config"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/p2p/conn"
	mempl "github.com/cometbft/cometbft/proto/tendermint/mempool"
	"github.com/cometbft/cometbft/version"
	"github.com/p2p-interop-tests/gocommon"
)

// fill is the filler multiplier of our transactions (gocommon.NewTx).
const fill = 1

// completeLine goes to stderr when the exchange is complete (sink: it is about to
// acknowledge; flood: the last acknowledgement arrived), so it precedes anything logged about
// the connection's end (e.g. the peer's EOF, logged as an error by the Switch).
const completeLine = "gopeer: exchange complete"

type options struct {
	gocommon.Flags

	probeChannel  byte
	probes        int
	probeInterval time.Duration
	probeSize     int
	warmBulk      int64
	probeSettle   time.Duration
	maxInbound    int
	unlimited     bool
	maxPacket     int
	flushTimeout  time.Duration
}

func parseFlags() (*options, error) {
	o := &options{}
	var probeChannel string
	o.Register(flag.CommandLine, "gopeer", gocommon.Usage{
		Listen:      "listen address host:port (required unless --print-id)",
		Dial:        "peers to dial: <id>@host:port, comma-separated (optional)",
		ChainID:     "network (chain ID) in our NodeInfo",
		Role:        "flood, sink or idle",
		Concurrency: "flood: sending goroutines; sink: the flood's value (1: in-order check)",
		PrintID:     "print the node ID and exit",
		Timeout:     "give up after this long (idle: run this long)",
	})
	flag.StringVar(&probeChannel, "probe-channel", "0x78", "probe channel ID (with --probes)")
	flag.IntVar(&o.probes, "probes", 0, "QoS mode: probes per phase (0: off)")
	flag.DurationVar(&o.probeInterval, "probe-interval", 5*time.Millisecond, "QoS: interval between probes")
	flag.IntVar(&o.probeSize, "probe-size", 200, "QoS: encoded probe size in bytes")
	flag.Int64Var(&o.warmBulk, "warm-bulk", 200, "QoS: bulk messages queued before the loaded phase")
	flag.DurationVar(&o.probeSettle, "probe-settle", 0, "QoS: then wait this long before the loaded phase")
	flag.IntVar(&o.maxInbound, "max-inbound", 40, "max_num_inbound_peers")
	flag.BoolVar(&o.unlimited, "unlimited", false, "send_rate and recv_rate 1e9 B/s instead of CometBFT's 5 120 000")
	flag.IntVar(&o.maxPacket, "max-packet-payload", 1024, "max_packet_msg_payload_size")
	flag.DurationVar(&o.flushTimeout, "flush-throttle", 100*time.Millisecond, "flush_throttle_timeout")
	if err := o.Parse(flag.CommandLine, os.Args[1:]); err != nil {
		return nil, err
	}

	var err error
	if o.probeChannel, err = gocommon.ParseChannel("probe-channel", probeChannel); err != nil {
		return nil, err
	}
	if o.Role != "flood" && o.Role != "sink" && o.Role != "idle" {
		return nil, fmt.Errorf("--role must be flood, sink or idle, got %q", o.Role)
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	switch {
	case o.probes > 0 && (o.probeSize < gocommon.MinSize || o.probeChannel == o.Channel || o.probeInterval <= 0 || o.warmBulk < 1):
		return nil, errors.New("--probes needs --probe-size >= 24, a --probe-interval, --warm-bulk >= 1 and a --probe-channel other than --channel")
	case o.probes > 0 && o.Duration > 0:
		return nil, errors.New("--probes and --duration do not combine")
	case o.Listen == "" && !o.PrintID:
		return nil, errors.New("--listen is required")
	}
	return o, nil
}

// txLenFor returns the transaction length whose wrapped message is exactly size bytes.
func txLenFor(size int) (int, error) {
	if l, ok := gocommon.TxLenFor(size); ok {
		return l, nil
	}
	return 0, fmt.Errorf("no transaction length wraps to exactly %d bytes", size)
}

// reactor is the flood/sink/idle reactor.
type reactor struct {
	p2p.BaseReactor

	o          *options
	txLen      int
	probeTxLen int

	peerUp chan p2p.Peer  // every added peer (flood, sink), buffered
	acks   *gocommon.Acks // flood: the acks of the peers
	done   chan struct{}  // sink: complete, or an error
	failed chan error     // a peer error before completion (buffered)
	once   sync.Once      // closes done
	stats  sinkStats      // sink counters, owned by the receive goroutine until done
	// received mirrors stats.Got for other goroutines (progress in error messages).
	received atomic.Int64
	// windowCPU receives the CPU time at the end of the timeframe window (sink timeframe).
	windowCPU chan gocommon.CPUTime

	peersMu sync.Mutex // idle: guards peerCount
	peerCnt int
}

type sinkStats struct {
	gocommon.Tally // data messages (send-drain, send-timeframe)

	ended    bool // "end" arrived
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
		peerUp:     make(chan p2p.Peer, o.Peers+16),
		acks:       gocommon.NewAcks(o.Peers, completeLine),
		done:       make(chan struct{}),
		failed:     make(chan error, 1),
		windowCPU:  make(chan gocommon.CPUTime, 1),
	}
	r.BaseReactor = *p2p.NewBaseReactor("FloodSink", r)
	return r
}

// channelIDs are the channels we have (our NodeInfo's and the reactor's).
func (o *options) channelIDs() []byte {
	if o.probes > 0 {
		return []byte{o.Channel, o.probeChannel}
	}
	return []byte{o.Channel}
}

// GetChannels implements p2p.Reactor.
func (r *reactor) GetChannels() []*conn.ChannelDescriptor {
	ds := []*conn.ChannelDescriptor{{
		ID:                  r.o.Channel,
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
	gocommon.PrintJSON(map[string]any{"event": "peers", "peers": r.peerCnt})
}

// AddPeer implements p2p.Reactor.
func (r *reactor) AddPeer(p p2p.Peer) {
	if r.o.Role == "idle" {
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
	if r.o.Role == "idle" {
		r.peerCountChanged(-1)
		return
	}
	fmt.Fprintf(os.Stderr, "gopeer: peer down: %s: %v\n", p.ID(), reason)
	if r.acks.From(string(p.ID())) {
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
	if r.o.Role == "idle" {
		return
	}
	msg, ok := e.Message.(*mempl.Txs)
	if !ok || len(msg.Txs) != 1 {
		r.finish(fmt.Errorf("unexpected message %T on channel %#x", e.Message, e.ChannelID))
		return
	}
	tx := msg.Txs[0]
	if r.o.Role == "flood" {
		if e.ChannelID != r.o.Channel {
			r.fail(fmt.Errorf("unexpected message of %d bytes instead of the ack", len(tx)))
			return
		}
		if err := r.acks.Receive(string(e.Src.ID()), tx); err != nil {
			r.fail(err)
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
	case e.ChannelID != r.o.Channel:
		r.finish(fmt.Errorf("message on unexpected channel %#x", e.ChannelID))
		return
	case bytes.Equal(tx, gocommon.EndTx):
		if r.o.Duration == 0 && r.o.probes == 0 {
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
		if r.o.Duration == 0 && r.o.probes == 0 {
			s.LastCPU = gocommon.ReadCPU()
		}
		fmt.Fprintln(os.Stderr, completeLine)
		ack := &mempl.Txs{Txs: [][]byte{gocommon.AckTx}}
		if !e.Src.Send(p2p.Envelope{ChannelID: r.o.Channel, Message: ack}) {
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
	case r.o.Duration > 0:
		return s.ended
	default:
		return s.Got == r.o.Count
	}
}

func (r *reactor) receiveData(tx []byte, now time.Time) {
	s := &r.stats
	if len(tx) != r.txLen {
		r.finish(fmt.Errorf("message %d: transaction of %d bytes, expected %d", s.Seen, len(tx), r.txLen))
		return
	}
	seq, sent := gocommon.Header(tx)
	if s.Seen == 0 {
		s.Start(now, r.o.Duration, func() { r.windowCPU <- gocommon.ReadCPU() })
	}
	if r.o.Concurrency == 1 {
		if seq != uint64(s.Seen) {
			r.finish(fmt.Errorf("message %d: sequence number %d (out of order or lost)", s.Seen, seq))
			return
		}
	} else {
		count := r.o.Count // send-drain: every number is below it
		if r.o.Duration != 0 {
			count = 0
		}
		// The bitset's word (seq/64) is at most seen+count+2^20.
		maxSeq := (uint64(s.Seen)+uint64(r.o.Count)+(1<<20))*64 + 63
		if err := s.Seqs.Add(seq, s.Seen, count, maxSeq); err != nil {
			r.finish(err)
			return
		}
	}
	s.Seen++
	if !s.InWindow(now, r.o.Duration) {
		return // in flight after the window: not counted, not delayed
	}
	s.Count(now, sent)
	r.received.Store(s.Got)
	if r.o.RecvDelay > 0 {
		time.Sleep(r.o.RecvDelay)
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
	_, sent := gocommon.Header(tx)
	phase := tx[gocommon.HeaderLen]
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

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopeer: %v\n", err)
		os.Exit(2)
	}

	var nodeKey *p2p.NodeKey
	if o.NodeKey != "" {
		nodeKey, err = p2p.LoadOrGenNodeKey(o.NodeKey)
		if err != nil {
			gocommon.Fail("gopeer", o.Role, fmt.Errorf("node key %s: %w", o.NodeKey, err))
		}
	} else {
		nodeKey = &p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}
	}
	if o.PrintID {
		fmt.Println(nodeKey.ID())
		return
	}
	if err := run(o, nodeKey); err != nil {
		gocommon.Fail("gopeer", o.Role, err)
	}
}

func run(o *options, nodeKey *p2p.NodeKey) error {
	txLen, err := txLenFor(o.Size)
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
	if o.Verbose {
		logger = log.NewFilter(logger, log.AllowInfo())
	} else {
		logger = log.NewFilter(logger, log.AllowError())
	}

	cfg := config.DefaultP2PConfig()
	cfg.ListenAddress = "tcp://" + o.Listen
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
		ListenAddr:      o.Listen,
		Network:         o.ChainID,
		Version:         version.TMCoreSemVer,
		Channels:        o.channelIDs(),
		Moniker:         o.Moniker,
	}
	if err := nodeInfo.Validate(); err != nil {
		return fmt.Errorf("our node info: %w", err)
	}

	transport := p2p.NewMultiplexTransport(nodeInfo, *nodeKey, p2p.MConnConfig(cfg))
	listenAddr, err := p2p.NewNetAddressString(p2p.IDAddressString(nodeKey.ID(), o.Listen))
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	if err := transport.Listen(*listenAddr); err != nil {
		return fmt.Errorf("listen on %s: %w", o.Listen, err)
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

	gocommon.PrintJSON(gocommon.Ready{Event: "ready", ID: string(nodeKey.ID()), Listen: o.Listen})

	if o.Role == "idle" {
		<-time.After(o.Timeout)
		r.peersMu.Lock()
		n := r.peerCnt
		r.peersMu.Unlock()
		gocommon.PrintJSON(gocommon.Result{Event: "result", Role: "idle", Peers: n})
		return nil
	}

	// The --dial peers are persistent peers, as a node's persistent_peers are: the Switch
	// dials with a 1 s TCP connect timeout and a 3 s handshake timeout of its own (the
	// config's dial_timeout and handshake_timeout do not reach MultiplexTransport in v0.38),
	// so on a lossy link one lost SYN fails a dial; the Switch then redials a persistent peer
	// after 5-8 s, and so does a real node. A failed first dial is therefore logged, not fatal
	// (--timeout still bounds the wait for the peers).
	if len(o.Dial) > 0 {
		if err := sw.AddPersistentPeers(o.Dial); err != nil {
			return fmt.Errorf("--dial: %w", err)
		}
	}
	for _, d := range o.Dial {
		addr, err := p2p.NewNetAddressString(d)
		if err != nil {
			return fmt.Errorf("--dial %q: %w", d, err)
		}
		if err := sw.DialPeerWithAddress(addr); err != nil {
			fmt.Fprintf(os.Stderr, "gopeer: dialing %s failed, the Switch redials it: %v\n", d, err)
		}
	}

	deadline := time.After(o.Timeout)
	want := 1
	if o.Role == "flood" {
		want = o.Peers
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
			return fmt.Errorf("%d of %d peers connected within %s", len(peers), want, o.Timeout)
		}
	}

	switch {
	case o.Role == "flood" && o.probes > 0:
		return floodQoS(o, r, peers[0], deadline)
	case o.Role == "flood":
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

// sendAll sends one control transaction to every peer.
func sendAll(r *reactor, peers []p2p.Peer, tx []byte) error {
	for _, p := range peers {
		env := p2p.Envelope{ChannelID: r.o.Channel, Message: &mempl.Txs{Txs: [][]byte{tx}}}
		if err := send(r, p, env); err != nil {
			return err
		}
	}
	return nil
}

func flood(o *options, r *reactor, peers []p2p.Peer, deadline <-chan time.Time) error {
	start := time.Now()
	startCPU := gocommon.ReadCPU()
	sent, err := gocommon.Flood(o.Concurrency, o.Count, o.Duration, len(peers), r.txLen, fill,
		func(tx []byte) func(int) error {
			// Send marshals the message before it returns, so tx can be reused.
			env := p2p.Envelope{ChannelID: o.Channel, Message: &mempl.Txs{Txs: [][]byte{tx}}}
			return func(i int) error { return send(r, peers[i], env) }
		})
	if err != nil {
		return err
	}
	if o.Duration > 0 {
		if err := sendAll(r, peers, gocommon.EndTx); err != nil {
			return fmt.Errorf("sending the end marker: %w", err)
		}
	}
	if err := r.acks.Wait(r.failed, deadline, o.Timeout); err != nil {
		return err
	}
	gocommon.PrintJSON(gocommon.FloodResult(sent, o.Size, start, startCPU, len(peers), string(peers[0].ID())))
	return nil
}

// sendProbes sends o.probes probes of the given phase, one per o.probeInterval.
func sendProbes(o *options, r *reactor, p p2p.Peer, phase byte, seq *uint64) error {
	tx := gocommon.NewTx(r.probeTxLen, fill)
	tx[gocommon.HeaderLen] = phase
	msg := &mempl.Txs{Txs: [][]byte{tx}}
	ticker := time.NewTicker(o.probeInterval)
	defer ticker.Stop()
	for i := 0; i < o.probes; i++ {
		<-ticker.C
		gocommon.Stamp(tx, *seq)
		*seq++
		if err := send(r, p, p2p.Envelope{ChannelID: o.probeChannel, Message: msg}); err != nil {
			return fmt.Errorf("probe %d of phase %d: %w", i, phase, err)
		}
	}
	return nil
}

func floodQoS(o *options, r *reactor, p p2p.Peer, deadline <-chan time.Time) error {
	start := time.Now()
	startCPU := gocommon.ReadCPU()
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
		tx := gocommon.NewTx(r.txLen, fill)
		msg := &mempl.Txs{Txs: [][]byte{tx}}
		for seq := uint64(0); !stop.Load(); seq++ {
			gocommon.Stamp(tx, seq)
			if err := send(r, p, p2p.Envelope{ChannelID: o.Channel, Message: msg}); err != nil {
				bulkErr <- fmt.Errorf("bulk message %d: %w", seq, err)
				if sent.Load() < o.warmBulk {
					close(warm)
				}
				return
			}
			if sent.Add(1) == o.warmBulk {
				close(warm)
			}
		}
	}()
	<-warm
	if o.probeSettle > 0 {
		// The settle period is the measurement's definition of "loaded", not a wait for an event.
		time.Sleep(o.probeSettle)
	}
	err := sendProbes(o, r, p, 1, &probeSeq)
	stop.Store(true)
	if bErr := <-bulkErr; bErr != nil {
		return bErr
	}
	if err != nil {
		return err
	}
	if err := sendAll(r, []p2p.Peer{p}, gocommon.EndTx); err != nil {
		return fmt.Errorf("sending the end marker: %w", err)
	}
	if err := r.acks.Wait(r.failed, deadline, o.Timeout); err != nil {
		return err
	}
	res := gocommon.FloodResult(sent.Load(), o.Size, start, startCPU, 1, string(p.ID()))
	res.Probes = o.probes
	gocommon.PrintJSON(res)
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
		return fmt.Errorf("only %d messages within %s", r.received.Load(), o.Timeout)
	}
	s := &r.stats
	if s.err != nil {
		return s.err
	}
	// Flush the acknowledgement before the connection closes.
	peer.FlushStop()
	if o.probes == 0 {
		gocommon.PrintJSON(s.SinkResult(string(peer.ID()), o.Size, o.Duration, r.windowCPU))
		return nil
	}
	// QoS: no data messages are counted (messages, bytes, seconds and the CPU time stay 0).
	res := gocommon.Result{
		Event:        "result",
		Role:         "sink",
		Peer:         string(peer.ID()),
		Probes:       o.probes,
		BulkMessages: s.bulkGot,
		BulkBytes:    s.bulkGot * int64(o.Size),
		BulkSeconds:  s.bulkTo.Sub(s.bulkFrom).Seconds(),
	}
	res.IdleP50Ms, res.IdleP99Ms = gocommon.Quantiles(s.probeLat[0])
	res.LoadedP50Ms, res.LoadedP99Ms = gocommon.Quantiles(s.probeLat[1])
	gocommon.PrintJSON(res)
	return nil
}
