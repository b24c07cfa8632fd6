package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// outcome is one answered call of the open loop: its code ("OK" / "200" when answered), when
// the answer came (monotonic seconds, as Python's time.monotonic) and whether it said when to
// come back (Retry-After).
type outcome struct {
	code  string
	ok    bool
	at    float64
	retry bool
	took  time.Duration // from the call's scheduled start
}

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		log.Fatalf("gateway-grpc-load: %v", err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)*1e-9
}

// openLoop starts send() at rate calls per second for seconds, each in its own goroutine and
// each timed from when it was due (so a late start counts as waiting); a call due while
// outstanding calls are in flight is not started, and counted.
func openLoop(send func() outcome, rate, seconds float64, outstanding int) ([]outcome, result) {
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
		inFlight atomic.Int64
	)
	total := int(rate * seconds)
	out := result{ByCode: map[string]int{}}
	began := time.Now()
	for i := 0; i < total; i++ {
		due := began.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		if inFlight.Load() >= int64(outstanding) {
			out.Unsent++
			continue
		}
		inFlight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inFlight.Add(-1)
			o := send()
			o.took = time.Since(due)
			mu.Lock()
			outcomes = append(outcomes, o)
			mu.Unlock()
		}()
	}
	sent := time.Since(began).Seconds()
	wg.Wait()
	out.Seconds = sent
	out.Offered = float64(total) / sent
	var latencies []time.Duration
	for _, o := range outcomes {
		if o.ok {
			latencies = append(latencies, o.took)
		} else {
			out.ByCode[o.code]++
			out.Errors++
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	out.Ok = len(latencies)
	out.OkPerS = float64(out.Ok) / sent
	out.P50Ms, out.P99Ms = quantileMs(latencies, 0.5), quantileMs(latencies, 0.99)
	return outcomes, out
}

func quantileMs(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / float64(time.Millisecond)
}

func report(outcomes []outcome, out result, record string) {
	if record != "" {
		file, err := os.Create(record)
		if err != nil {
			log.Fatalf("gateway-grpc-load: %v", err)
		}
		w := bufio.NewWriter(file)
		for _, o := range outcomes {
			retry := 0
			if o.retry {
				retry = 1
			}
			ms := float64(o.took) / float64(time.Millisecond)
			fmt.Fprintf(w, "%.6f %s %.3f %d\n", o.at, o.code, ms, retry)
		}
		if err := w.Flush(); err != nil {
			log.Fatal(err)
		}
		file.Close()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		log.Fatal(err)
	}
}

// grpcSender calls method with the request over connections HTTP/2 connections, in turn.
func grpcSender(target, method string, body []byte, connections int) func() outcome {
	codec := grpc.ForceCodec(rawCodec{})
	conns := make([]*grpc.ClientConn, connections)
	for i := range conns {
		var err error
		if conns[i], err = grpc.Dial(target, grpc.WithInsecure()); err != nil {
			log.Fatalf("gateway-grpc-load: %v", err)
		}
	}
	request := &message{data: body}
	var next atomic.Uint64
	return func() outcome {
		conn := conns[next.Add(1)%uint64(len(conns))]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var reply message
		var header metadata.MD
		err := conn.Invoke(ctx, method, request, &reply, codec, grpc.Header(&header))
		code := status.Code(err).String()
		return outcome{code: code, ok: err == nil, at: monotonic(), retry: len(header.Get("retry-after")) > 0}
	}
}

// httpSender posts the bodies (one JSON document per line of body) to url, in turn, over at
// most connections keep-alive connections: calls due while all are busy wait for one, and
// that wait counts in their latency.
func httpSender(url string, body []byte, connections int) func() outcome {
	var bodies [][]byte
	for _, line := range bytes.Split(body, []byte("\n")) {
		if len(bytes.TrimSpace(line)) > 0 {
			bodies = append(bodies, line)
		}
	}
	if len(bodies) == 0 {
		log.Fatal("gateway-grpc-load: -http needs JSON bodies on standard input, one per line")
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxConnsPerHost:     connections,
			MaxIdleConns:        connections,
			MaxIdleConnsPerHost: connections,
			DisableCompression:  true,
		},
	}
	var next atomic.Uint64
	return func() outcome {
		data := bodies[next.Add(1)%uint64(len(bodies))]
		resp, err := client.Post(url, "application/json", bytes.NewReader(data))
		if err != nil {
			return outcome{code: "0", at: monotonic()} // no answer: a socket error
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return outcome{
			code:  strconv.Itoa(resp.StatusCode),
			ok:    resp.StatusCode == http.StatusOK,
			at:    monotonic(),
			retry: resp.Header.Get("Retry-After") != "",
		}
	}
}
