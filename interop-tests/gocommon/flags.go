package gocommon

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Flags are the flags both programs take with one meaning (golp2p takes all of gopeer's
// flags, but ignores some; those and the programs' own flags are theirs to define).
type Flags struct {
	Listen      string
	Dial        []string
	ChainID     string
	Moniker     string
	Role        string
	Channel     byte
	Size        int
	Count       int64
	Concurrency int
	RecvDelay   time.Duration
	Duration    time.Duration
	Peers       int
	NodeKey     string
	PrintID     bool
	Timeout     time.Duration
	Verbose     bool

	channel, dial string // as given, until Parse
}

// Usage is the help text of the shared flags whose help differs between the programs.
type Usage struct {
	Listen, Dial, ChainID, Role, Concurrency, PrintID, Timeout string
}

// Register defines the shared flags on fs. The default chain ID is "<program>-chain", the
// default moniker program.
func (f *Flags) Register(fs *flag.FlagSet, program string, u Usage) {
	fs.StringVar(&f.Listen, "listen", "", u.Listen)
	fs.StringVar(&f.dial, "dial", "", u.Dial)
	fs.StringVar(&f.ChainID, "chain-id", program+"-chain", u.ChainID)
	fs.StringVar(&f.Moniker, "moniker", program, "moniker in our NodeInfo")
	fs.StringVar(&f.Role, "role", "sink", u.Role)
	fs.StringVar(&f.channel, "channel", "0x77", "data channel ID (decimal or 0x-hex)")
	fs.IntVar(&f.Size, "size", 1024, "encoded message size in bytes (Txs wrapper included), at least 24")
	fs.Int64Var(&f.Count, "count", 1000, "messages to flood / to expect (send-drain)")
	fs.IntVar(&f.Concurrency, "concurrency", 1, u.Concurrency)
	fs.DurationVar(&f.RecvDelay, "recv-delay", 0, "sink: sleep this long after every counted message")
	fs.DurationVar(&f.Duration, "duration", 0, "send-timeframe: flood sends for this long, sink counts this long")
	fs.IntVar(&f.Peers, "peers", 1, "flood: peers to wait for; every message goes to all")
	fs.StringVar(&f.NodeKey, "node-key", "", "node_key.json to load (created if missing); default: a fresh key")
	fs.BoolVar(&f.PrintID, "print-id", false, u.PrintID)
	fs.DurationVar(&f.Timeout, "timeout", 5*time.Minute, u.Timeout)
	fs.BoolVar(&f.Verbose, "verbose", false, "log CometBFT at info level (default: errors only)")
}

// Parse parses args with fs (on which Register defined the flags), then --channel and --dial.
func (f *Flags) Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if f.Channel, err = ParseChannel("channel", f.channel); err != nil {
		return err
	}
	if f.dial != "" {
		f.Dial = strings.Split(f.dial, ",")
	}
	return nil
}

// Check checks --size, --count, --concurrency and --peers (in this order).
func (f *Flags) Check() error {
	switch {
	case f.Size < MinSize:
		return fmt.Errorf("--size must be at least %d, got %d", MinSize, f.Size)
	case f.Count < 1:
		return fmt.Errorf("--count must be at least 1, got %d", f.Count)
	case f.Concurrency < 1:
		return fmt.Errorf("--concurrency must be at least 1, got %d", f.Concurrency)
	case f.Peers < 1:
		return fmt.Errorf("--peers must be at least 1, got %d", f.Peers)
	}
	return nil
}

// ParseChannel parses the value v of the channel flag --name (decimal or 0x-hex).
func ParseChannel(name, v string) (byte, error) {
	ch, err := strconv.ParseUint(v, 0, 8)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: %w", name, v, err)
	}
	return byte(ch), nil
}
