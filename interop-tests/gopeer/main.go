// Command gopeer is a minimal CometBFT v0.38 P2P node for interop tests and benchmarks.
//
// It runs a p2p.Switch over a p2p.MultiplexTransport (SecretConnection + MConnection) with one
// reactor on one channel (--channel, default 0x77) that carries mempool `Txs` wrapper messages,
// the same wire format as CometBFT's mempool channel. The reactor either floods --count
// messages of --size bytes to the first peer (--role flood) or receives and checks them
// (--role sink).
//
// Protocol between the two roles: every flooded transaction starts with an 8-byte big-endian
// sequence number (0, 1, 2, ...) and is padded so that the encoded message (the
// `tendermint.mempool.Message{Txs{[tx]}}` wrapper) is exactly --size bytes. The sink checks
// the order and the size; after the last message it sends one acknowledgement message back (a
// single transaction "ack"), flushes it and exits. The flood exits when the acknowledgement
// arrives.
//
// Standard output carries JSON lines only:
//
//	{"event":"ready","id":"<node id>","listen":"127.0.0.1:PORT"}
//	{"event":"result","role":"sink","messages":N,"bytes":B,"seconds":T,"cpu_seconds":C,
//	 "cpu_user_seconds":U,"cpu_sys_seconds":S,"peer":"<id>"}
//
// The result's seconds run from the first received message to the last (sink) or from the
// first send to the acknowledgement (flood); cpu_seconds is the process's user+system CPU time
// (getrusage) over the same interval. A failure prints a result with "error" set and exits 1.
// Diagnostics go to standard error; the line "gopeer: exchange complete" there separates the
// exchange from the teardown (whichever side closes first, the other's Switch logs the EOF as
// an error).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
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

// seqLen is the length of the sequence number at the start of every flooded transaction.
const seqLen = 8

// ackTx is the transaction the sink sends back after the last message.
var ackTx = []byte("ack")

// completeLine goes to stderr when the exchange is complete (sink: the last message arrived;
// flood: the acknowledgement arrived), on the receiving goroutine, so it precedes anything
// logged about the connection's end (e.g. the peer's EOF, logged as an error by the Switch).
const completeLine = "gopeer: exchange complete"

type options struct {
	listen       string
	dial         string
	chainID      string
	moniker      string
	role         string
	channel      byte
	size         int
	count        int64
	unlimited    bool
	maxPacket    int
	flushTimeout time.Duration
	nodeKey      string
	printID      bool
	timeout      time.Duration
	verbose      bool
}

func parseFlags() (*options, error) {
	o := &options{}
	var channel string
	flag.StringVar(&o.listen, "listen", "", "listen address host:port (required unless --print-id)")
	flag.StringVar(&o.dial, "dial", "", "peer to dial: <id>@host:port (optional)")
	flag.StringVar(&o.chainID, "chain-id", "gopeer-chain", "network (chain ID) in our NodeInfo")
	flag.StringVar(&o.moniker, "moniker", "gopeer", "moniker in our NodeInfo")
	flag.StringVar(&o.role, "role", "sink", "flood or sink")
	flag.StringVar(&channel, "channel", "0x77", "channel ID (decimal or 0x-hex)")
	flag.IntVar(&o.size, "size", 1024, "encoded message size in bytes (Txs wrapper included), at least 16")
	flag.Int64Var(&o.count, "count", 1000, "messages to flood / to expect")
	flag.BoolVar(&o.unlimited, "unlimited", false, "send_rate and recv_rate 1e9 B/s instead of CometBFT's 5 120 000")
	flag.IntVar(&o.maxPacket, "max-packet-payload", 1024, "max_packet_msg_payload_size")
	flag.DurationVar(&o.flushTimeout, "flush-throttle", 100*time.Millisecond, "flush_throttle_timeout")
	flag.StringVar(&o.nodeKey, "node-key", "", "node_key.json to load (created if missing); default: a fresh key")
	flag.BoolVar(&o.printID, "print-id", false, "print the node ID and exit")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.BoolVar(&o.verbose, "verbose", false, "log CometBFT at info level (default: errors only)")
	flag.Parse()

	ch, err := strconv.ParseUint(channel, 0, 8)
	if err != nil {
		return nil, fmt.Errorf("--channel %q: %w", channel, err)
	}
	o.channel = byte(ch)
	if o.role != "flood" && o.role != "sink" {
		return nil, fmt.Errorf("--role must be flood or sink, got %q", o.role)
	}
	if o.size < 16 {
		return nil, fmt.Errorf("--size must be at least 16, got %d", o.size)
	}
	if o.count < 1 {
		return nil, fmt.Errorf("--count must be at least 1, got %d", o.count)
	}
	if o.listen == "" && !o.printID {
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
	for l := size - 2; l >= seqLen && l >= size-12; l-- {
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

// since fills the CPU fields of r with the CPU time used since start.
func (start cpuTime) since(r *result) {
	now := readCPU()
	r.CPUUser = now.user - start.user
	r.CPUSys = now.sys - start.sys
	r.CPUSeconds = r.CPUUser + r.CPUSys
}

type result struct {
	Event      string  `json:"event"`
	Role       string  `json:"role"`
	Messages   int64   `json:"messages"`
	Bytes      int64   `json:"bytes"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUUser    float64 `json:"cpu_user_seconds"`
	CPUSys     float64 `json:"cpu_sys_seconds"`
	Peer       string  `json:"peer,omitempty"`
	Error      string  `json:"error,omitempty"`
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

// reactor is the flood/sink reactor on one channel.
type reactor struct {
	p2p.BaseReactor

	channel byte
	role    string
	txLen   int
	count   int64

	peerUp chan p2p.Peer // the first peer that was added
	acked  chan struct{} // flood: the sink's acknowledgement arrived
	done   chan struct{} // sink: all messages arrived, or an error
	failed chan error    // a peer error before completion (buffered)
	once   sync.Once     // closes done
	ackOne sync.Once     // closes acked
	upOne  sync.Once     // sends on peerUp
	stats  sinkStats     // sink counters, owned by the receive goroutine until done
	// received mirrors stats.got for other goroutines (progress in error messages).
	received atomic.Int64
}

type sinkStats struct {
	got      int64
	first    time.Time
	firstCPU cpuTime
	last     time.Time
	lastCPU  cpuTime
	err      error
}

func newReactor(o *options, txLen int) *reactor {
	r := &reactor{
		channel: o.channel,
		role:    o.role,
		txLen:   txLen,
		count:   o.count,
		peerUp:  make(chan p2p.Peer, 1),
		acked:   make(chan struct{}),
		done:    make(chan struct{}),
		failed:  make(chan error, 1),
	}
	r.BaseReactor = *p2p.NewBaseReactor("FloodSink", r)
	return r
}

// GetChannels implements p2p.Reactor.
func (r *reactor) GetChannels() []*conn.ChannelDescriptor {
	return []*conn.ChannelDescriptor{{
		ID:                  r.channel,
		Priority:            5,
		SendQueueCapacity:   100,
		RecvMessageCapacity: 2 << 20,
		MessageType:         &mempl.Message{},
	}}
}

// AddPeer implements p2p.Reactor.
func (r *reactor) AddPeer(p p2p.Peer) {
	fmt.Fprintf(os.Stderr, "gopeer: peer up: %s (%s)\n", p.ID(), p.SocketAddr())
	r.upOne.Do(func() { r.peerUp <- p })
}

// RemovePeer implements p2p.Reactor.
func (r *reactor) RemovePeer(p p2p.Peer, reason interface{}) {
	fmt.Fprintf(os.Stderr, "gopeer: peer down: %s: %v\n", p.ID(), reason)
	err := fmt.Errorf("peer %s removed: %v", p.ID(), reason)
	select {
	case r.failed <- err:
	default:
	}
}

// Receive implements p2p.Reactor. It runs on the peer's receive goroutine, so the sink's
// counters need no lock until done is closed.
func (r *reactor) Receive(e p2p.Envelope) {
	if e.ChannelID != r.channel {
		return
	}
	msg, ok := e.Message.(*mempl.Txs)
	if !ok {
		r.finish(fmt.Errorf("unexpected message type %T", e.Message))
		return
	}
	if r.role == "flood" {
		if len(msg.Txs) != 1 || !bytes.Equal(msg.Txs[0], ackTx) {
			select {
			case r.failed <- fmt.Errorf("unexpected message with %d transactions instead of the ack", len(msg.Txs)):
			default:
			}
			return
		}
		r.ackOne.Do(func() {
			fmt.Fprintln(os.Stderr, completeLine)
			close(r.acked)
		})
		return
	}
	s := &r.stats
	if s.got >= r.count {
		return
	}
	for _, tx := range msg.Txs {
		if s.got == 0 {
			s.first = time.Now()
			s.firstCPU = readCPU()
		}
		if len(tx) != r.txLen {
			r.finish(fmt.Errorf("message %d: transaction of %d bytes, expected %d", s.got, len(tx), r.txLen))
			return
		}
		if seq := binary.BigEndian.Uint64(tx[:seqLen]); seq != uint64(s.got) {
			r.finish(fmt.Errorf("message %d: sequence number %d (out of order or lost)", s.got, seq))
			return
		}
		s.got++
		r.received.Store(s.got)
		if s.got == r.count {
			s.last = time.Now()
			s.lastCPU = readCPU()
			fmt.Fprintln(os.Stderr, completeLine)
			ack := &mempl.Txs{Txs: [][]byte{ackTx}}
			if !e.Src.Send(p2p.Envelope{ChannelID: r.channel, Message: ack}) {
				r.finish(errors.New("could not queue the acknowledgement"))
				return
			}
			r.finish(nil)
			return
		}
	}
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
	if o.unlimited {
		cfg.SendRate = 1_000_000_000
		cfg.RecvRate = 1_000_000_000
	}

	r := newReactor(o, txLen)
	nodeInfo := p2p.DefaultNodeInfo{
		ProtocolVersion: p2p.NewProtocolVersion(version.P2PProtocol, version.BlockProtocol, 0),
		DefaultNodeID:   nodeKey.ID(),
		ListenAddr:      o.listen,
		Network:         o.chainID,
		Version:         version.TMCoreSemVer,
		Channels:        []byte{o.channel},
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

	if o.dial != "" {
		addr, err := p2p.NewNetAddressString(o.dial)
		if err != nil {
			return fmt.Errorf("--dial %q: %w", o.dial, err)
		}
		if err := sw.DialPeerWithAddress(addr); err != nil {
			return fmt.Errorf("dialing %s: %w", o.dial, err)
		}
	}

	deadline := time.After(o.timeout)
	var peer p2p.Peer
	select {
	case peer = <-r.peerUp:
	case <-deadline:
		return fmt.Errorf("no peer connected within %s", o.timeout)
	}

	if info, ok := peer.NodeInfo().(p2p.DefaultNodeInfo); !ok || !info.HasChannel(o.channel) {
		return fmt.Errorf("peer %s does not have channel %#x", peer.ID(), o.channel)
	}
	if o.role == "flood" {
		return flood(o, r, peer, deadline)
	}
	return sink(o, r, peer, deadline)
}

func flood(o *options, r *reactor, peer p2p.Peer, deadline <-chan time.Time) error {
	tx := make([]byte, r.txLen)
	for i := seqLen; i < len(tx); i++ {
		tx[i] = byte(i)
	}
	msg := &mempl.Txs{Txs: [][]byte{tx}}
	start := time.Now()
	startCPU := readCPU()
	for seq := int64(0); seq < o.count; seq++ {
		// peer.Send marshals the message before it returns, so tx can be reused.
		binary.BigEndian.PutUint64(tx[:seqLen], uint64(seq))
		for !peer.Send(p2p.Envelope{ChannelID: r.channel, Message: msg}) {
			if !peer.IsRunning() {
				return fmt.Errorf("peer stopped after %d of %d messages", seq, o.count)
			}
			select {
			case err := <-r.failed:
				return fmt.Errorf("after %d of %d messages: %w", seq, o.count, err)
			default:
			}
		}
	}
	select {
	case <-r.acked:
	case err := <-r.failed:
		return fmt.Errorf("waiting for the acknowledgement: %w", err)
	case <-deadline:
		return fmt.Errorf("no acknowledgement within %s", o.timeout)
	}
	res := result{
		Event:    "result",
		Role:     "flood",
		Messages: o.count,
		Bytes:    o.count * int64(o.size),
		Seconds:  time.Since(start).Seconds(),
		Peer:     string(peer.ID()),
	}
	startCPU.since(&res)
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
			return fmt.Errorf("after %d of %d messages: %w", r.received.Load(), o.count, err)
		}
	case <-deadline:
		return fmt.Errorf("only %d of %d messages within %s", r.received.Load(), o.count, o.timeout)
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
		CPUUser:  s.lastCPU.user - s.firstCPU.user,
		CPUSys:   s.lastCPU.sys - s.firstCPU.sys,
		Peer:     string(peer.ID()),
	}
	res.CPUSeconds = res.CPUUser + res.CPUSys
	printJSON(res)
	return nil
}
