package gocommon

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Flood runs the flood's senders: concurrency goroutines, goroutine j sending the sequence
// numbers j, j+N, j+2N, ... below count, or (duration > 0, send-timeframe) until duration has
// passed (a send still blocked then completes), every message to each of peers peers. Every
// goroutine has one data transaction of txLen bytes (NewTx(txLen, mul)) and calls newSend
// with it once; the function newSend returns sends the transaction, stamped with the next
// sequence number and the send time, to peer i, and must be done with tx when it returns (tx
// is reused). Flood returns how many messages went to all peers, or the first error (which
// stops all senders).
func Flood(concurrency int, count int64, duration time.Duration, peers, txLen int, mul byte,
	newSend func(tx []byte) func(i int) error) (int64, error) {
	var stop atomic.Bool
	var sent atomic.Int64
	limit := uint64(count)
	if duration > 0 {
		limit = math.MaxUint64
		t := time.AfterFunc(duration, func() { stop.Store(true) })
		defer t.Stop()
	}
	errs := make(chan error, concurrency)
	var wg sync.WaitGroup
	for j := 0; j < concurrency; j++ {
		wg.Add(1)
		go func(j int) {
			defer wg.Done()
			tx := NewTx(txLen, mul)
			send := newSend(tx)
			for seq := uint64(j); seq < limit && !stop.Load(); seq += uint64(concurrency) {
				Stamp(tx, seq)
				for i := 0; i < peers; i++ {
					if err := send(i); err != nil {
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
		return 0, err
	default:
	}
	return sent.Load(), nil
}

// Acks is a flood's record of its peers' acknowledgements.
type Acks struct {
	want         int64
	completeLine string
	n            atomic.Int64
	from         sync.Map // IDs of the peers that acknowledged (they may hang up)
	all          chan struct{}
}

// NewAcks waits for the acknowledgements of peers peers; when the last one arrives it prints
// completeLine on standard error.
func NewAcks(peers int, completeLine string) *Acks {
	return &Acks{want: int64(peers), completeLine: completeLine, all: make(chan struct{})}
}

// Receive handles the transaction tx from the peer with ID peer: an error if it is not the
// ack or the peer acknowledged before.
func (a *Acks) Receive(peer string, tx []byte) error {
	if !bytes.Equal(tx, AckTx) {
		return fmt.Errorf("unexpected message of %d bytes instead of the ack", len(tx))
	}
	if _, again := a.from.LoadOrStore(peer, true); again {
		return fmt.Errorf("second ack from peer %s", peer)
	}
	if a.n.Add(1) == a.want {
		fmt.Fprintln(os.Stderr, a.completeLine)
		close(a.all)
	}
	return nil
}

// From tells whether the peer with ID peer has acknowledged (it is done and may hang up).
func (a *Acks) From(peer string) bool {
	_, ok := a.from.Load(peer)
	return ok
}

// Wait waits for all acknowledgements; it fails on an error from failed or at deadline (the
// one of --timeout, given as timeout for the message).
func (a *Acks) Wait(failed <-chan error, deadline <-chan time.Time, timeout time.Duration) error {
	select {
	case <-a.all:
		return nil
	case err := <-failed:
		return fmt.Errorf("waiting for the acknowledgements: %w", err)
	case <-deadline:
		return fmt.Errorf("only %d of %d acknowledgements within %s", a.n.Load(), a.want, timeout)
	}
}
