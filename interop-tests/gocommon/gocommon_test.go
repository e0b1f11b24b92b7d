package gocommon

import (
	"strings"
	"testing"
	"time"
)

func TestTxLenFor(t *testing.T) {
	const top = 1 << 17
	// WrappedLen grows strictly: every size has at most one transaction length.
	lenOf := map[int]int{}
	for l := HeaderLen + 1; l <= top; l++ {
		lenOf[WrappedLen(l)] = l
	}
	for size := MinSize; size <= top; size++ {
		want, found := lenOf[size]
		got, ok := TxLenFor(size)
		if ok != found || got != want {
			t.Fatalf("TxLenFor(%d) = %d, %v; want %d, %v", size, got, ok, want, found)
		}
	}
	// The varint of the Txs message grows from one byte to two: 133 bytes cannot be encoded.
	if l, ok := TxLenFor(133); ok {
		t.Fatalf("TxLenFor(133) = %d", l)
	}
	if l, _ := TxLenFor(1024); WrappedLen(l) != 1024 || l != 1018 {
		t.Fatalf("TxLenFor(1024) = %d", l)
	}
}

func TestTxHeader(t *testing.T) {
	tx := NewTx(40, 7)
	if tx[HeaderLen] != HeaderLen*7 || tx[39] != (39*7)%256 {
		t.Fatalf("filler %v", tx)
	}
	before := time.Now().UnixNano()
	Stamp(tx, 12345)
	seq, sent := Header(tx)
	if seq != 12345 || sent < before || sent > time.Now().UnixNano() {
		t.Fatalf("Header = %d, %d", seq, sent)
	}
}

func TestSeqSet(t *testing.T) {
	var s SeqSet
	for _, seq := range []uint64{3, 0, 64, 2} {
		if err := s.Add(seq, 0, 100, 1000); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		seq          uint64
		count        int64
		maxSeq       uint64
		errorContain string
	}{
		{64, 100, 1000, "sequence number 64 again"},
		{100, 100, 1000, "sequence number 100 of 100"},
		{1001, 0, 1000, "implausible sequence number 1001"},
	} {
		err := s.Add(c.seq, 7, c.count, c.maxSeq)
		if err == nil || !strings.Contains(err.Error(), c.errorContain) || !strings.HasPrefix(err.Error(), "message 7: ") {
			t.Fatalf("Add(%d) = %v, want %q", c.seq, err, c.errorContain)
		}
	}
	if err := s.Add(500, 0, 0, 1000); err != nil { // count 0: no bound
		t.Fatal(err)
	}
}

func TestQuantiles(t *testing.T) {
	if p50, p99 := Quantiles(nil); p50 != nil || p99 != nil {
		t.Fatal("quantiles of nothing")
	}
	lat := make([]int64, 0, 200)
	for i := 200; i >= 1; i-- {
		lat = append(lat, int64(i)*1e6)
	}
	p50, p99 := Quantiles(lat)
	if *p50 != 100 || *p99 != 198 || lat[0] != 200e6 {
		t.Fatalf("p50 %v p99 %v, lat[0] %d", *p50, *p99, lat[0])
	}
}

func TestFloodAndAcks(t *testing.T) {
	seen := make(chan uint64, 1000)
	sent, err := Flood(3, 10, 0, 2, 24, 1, func(tx []byte) func(int) error {
		return func(i int) error {
			if i == 0 {
				seq, _ := Header(tx)
				seen <- seq
			}
			return nil
		}
	})
	close(seen)
	if err != nil || sent != 10 {
		t.Fatalf("Flood = %d, %v", sent, err)
	}
	var set SeqSet
	for seq := range seen {
		if err := set.Add(seq, 0, 10, 100); err != nil {
			t.Fatal(err)
		}
	}

	a := NewAcks(2, "test: exchange complete")
	if err := a.Receive("x", []byte("nack")); err == nil {
		t.Fatal("not an ack accepted")
	}
	if err := a.Receive("a", AckTx); err != nil || !a.From("a") || a.From("b") {
		t.Fatal(err)
	}
	if err := a.Receive("a", AckTx); err == nil {
		t.Fatal("second ack accepted")
	}
	if err := a.Wait(nil, time.After(time.Millisecond), time.Millisecond); err == nil ||
		err.Error() != "only 1 of 2 acknowledgements within 1ms" {
		t.Fatal(err)
	}
	if err := a.Receive("b", AckTx); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(nil, nil, time.Second); err != nil {
		t.Fatal(err)
	}
}
