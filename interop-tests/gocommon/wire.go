// Package gocommon is the part of the interop-test peers gopeer (CometBFT v0.38's p2p) and
// golp2p (CometBFT v0.40's lp2p) that does not depend on CometBFT: the layout of their
// transactions and the size arithmetic of the Txs wrapper, the sink's sequence checks and
// counters, latency quantiles, CPU time, the JSON lines they print, their shared flags, the
// flood's senders and the acknowledgements. It uses only the standard library, so each program
// keeps its own CometBFT version; the programs' package comments are the specification.
package gocommon

import (
	"encoding/binary"
	"fmt"
	"time"
)

// HeaderLen is the length of the sequence number and send time at the start of every data
// transaction and probe.
const HeaderLen = 16

// MinSize is the smallest encoded message size (--size, --probe-size) the programs accept.
const MinSize = 24

var (
	// AckTx is the transaction the sink sends back when it is done.
	AckTx = []byte("ack")
	// EndTx is the transaction the flood sends after its last message (timeframe and QoS).
	EndTx = []byte("end")
)

// uvarintLen is the length of x as a protobuf varint.
func uvarintLen(x int) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// WrappedLen is the encoded size of tendermint.mempool.Message{Txs{txs: [tx]}} for a tx of
// txLen bytes: field 1 (txs, the Txs message) of Message holding field 1 (one tx) of Txs.
func WrappedLen(txLen int) int {
	inner := 1 + uvarintLen(txLen) + txLen
	return 1 + uvarintLen(inner) + inner
}

// TxLenFor returns the transaction length whose wrapped message is exactly size bytes; ok is
// false if there is none (some sizes are skipped where a varint grows by a byte).
func TxLenFor(size int) (txLen int, ok bool) {
	// The two tags and two varints take between 4 and 12 bytes.
	for l := size - 4; l > HeaderLen && l >= size-12; l-- {
		if WrappedLen(l) == size {
			return l, true
		}
	}
	return 0, false
}

// NewTx is a transaction of n bytes: room for the header, then a filler whose byte i is
// i*mul (mod 256). The filler means nothing; gopeer uses mul 1, golp2p 7.
func NewTx(n int, mul byte) []byte {
	tx := make([]byte, n)
	for i := HeaderLen; i < n; i++ {
		tx[i] = byte(i) * mul
	}
	return tx
}

// Stamp writes the sequence number and the send time (Unix nanoseconds, CLOCK_REALTIME) into
// the header of tx.
func Stamp(tx []byte, seq uint64) {
	binary.BigEndian.PutUint64(tx[:8], seq)
	binary.BigEndian.PutUint64(tx[8:HeaderLen], uint64(time.Now().UnixNano()))
}

// Header reads the sequence number and the send time of tx (at least HeaderLen bytes).
func Header(tx []byte) (seq uint64, sent int64) {
	return binary.BigEndian.Uint64(tx[:8]), int64(binary.BigEndian.Uint64(tx[8:HeaderLen]))
}

// SeqSet is a bitset of the sequence numbers a sink has seen.
type SeqSet struct {
	words []uint64
}

// Add records seq, the sequence number of the sink's data message number seen (0-based; for
// the error messages). It fails if count > 0 (send-drain: --count) and seq is not below it,
// if seq is above maxSeq (the bound that keeps the bitset small), or if seq was seen before.
func (s *SeqSet) Add(seq uint64, seen, count int64, maxSeq uint64) error {
	if count > 0 && seq >= uint64(count) {
		return fmt.Errorf("message %d: sequence number %d of %d", seen, seq, count)
	}
	if seq > maxSeq {
		return fmt.Errorf("message %d: implausible sequence number %d", seen, seq)
	}
	word, bit := seq/64, uint64(1)<<(seq%64)
	for uint64(len(s.words)) <= word {
		s.words = append(s.words, 0)
	}
	if s.words[word]&bit != 0 {
		return fmt.Errorf("message %d: sequence number %d again", seen, seq)
	}
	s.words[word] |= bit
	return nil
}
