// gateway-grpc-load: a gRPC (and HTTP) load generator, the counterpart of wrk for gRPC.
//
// Closed loop (the default), it keeps -concurrency calls of one method in flight over
// -connections HTTP/2 connections for -seconds, each call sending the same request: the bytes
// of a serialized protobuf message, read from standard input, so the generator never parses a
// message and spends its time on the transport. It prints one JSON line: ok calls per second,
// p50 and p99 latency in ms, and the failed calls by status code. Written in Go so that one
// core of load can saturate a server: a Python gRPC client spends about as much CPU per call as
// the server does.
//
// Open loop (-rate R), call i starts at i/R seconds whatever the server does, and its latency
// counts from then: the load of clients that do not wait for each other, which is what
// overloads a server (a closed loop only ever offers what the server answers). With -http URL
// it posts HTTP instead, over at most -connections connections: the JSON bodies on standard
// input, one per line, in turn; -record FILE
// then writes one line per answer (monotonic seconds, status, ms, whether Retry-After came).
//
//	python -c 'from loadtests.grpc_load import loans_request; import sys; sys.stdout.buffer.write(loans_request())' \
//	    | gateway-grpc-load -target 127.0.0.1:3002 -seconds 20
package main

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// message is a protobuf message left as bytes.
type message struct{ data []byte }

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.(*message).data, nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	v.(*message).data = data
	return nil
}

func (rawCodec) Name() string { return "proto" }

type result struct {
	Offered float64        `json:"offered_per_s"`
	Unsent  int            `json:"unsent"` // open loop: calls not started, -max-outstanding in flight
	OkPerS  float64        `json:"ok_per_s"`
	Ok      int            `json:"ok"`
	P50Ms   float64        `json:"p50_ms"`
	P99Ms   float64        `json:"p99_ms"`
	Errors  int            `json:"errors"`
	ByCode  map[string]int `json:"errors_by_code"`
	Seconds float64        `json:"seconds"`
}

// caller is one call loop's record.
type caller struct {
	latencies []time.Duration
	failed    map[string]int
}

func main() {
	target := flag.String("target", "127.0.0.1:3002", "host:port of the gRPC server")
	method := flag.String("method", "/inference.GRPCInferenceService/ModelInfer", "full method name")
	seconds := flag.Float64("seconds", 20, "how long to load the server")
	concurrency := flag.Int("concurrency", 64, "calls in flight")
	connections := flag.Int("connections", 4, "HTTP/2 connections the calls are spread over")
	rate := flag.Float64("rate", 0, "open loop: calls started per second (0: closed loop)")
	outstanding := flag.Int("max-outstanding", 20000, "open loop: most calls in flight")
	httpURL := flag.String("http", "", "open loop over HTTP: the URL to post the bodies to")
	record := flag.String("record", "", "HTTP: write one line per answer to this file")
	flag.Parse()
	log.SetFlags(0)
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		log.Fatalf("gateway-grpc-load: reading the request: %v", err)
	}
	if *rate > 0 {
		var send func() outcome
		if *httpURL != "" {
			send = httpSender(*httpURL, body, *connections)
		} else {
			send = grpcSender(*target, *method, body, *connections)
		}
		outcomes, out := openLoop(send, *rate, *seconds, *outstanding)
		report(outcomes, out, *record)
		return
	}
	request := &message{data: body}
	codec := grpc.ForceCodec(rawCodec{})
	conns := make([]*grpc.ClientConn, *connections)
	for i := range conns {
		if conns[i], err = grpc.Dial(*target, grpc.WithInsecure()); err != nil {
			log.Fatalf("gateway-grpc-load: %v", err)
		}
		defer conns[i].Close()
	}
	// The answer must be good before the clock starts.
	first, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = conns[0].Invoke(first, *method, request, &message{}, codec, grpc.WaitForReady(true))
	cancel()
	if err != nil {
		log.Fatalf("gateway-grpc-load: the first call failed: %v", err)
	}
	callers := make([]caller, *concurrency)
	var wg sync.WaitGroup
	began := time.Now()
	deadline := began.Add(time.Duration(*seconds * float64(time.Second)))
	for i := range callers {
		wg.Add(1)
		go func(c *caller, conn *grpc.ClientConn) {
			defer wg.Done()
			c.failed = map[string]int{}
			var reply message
			for {
				started := time.Now()
				if !started.Before(deadline) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := conn.Invoke(ctx, *method, request, &reply, codec)
				cancel()
				if err != nil {
					c.failed[status.Code(err).String()]++
					continue
				}
				c.latencies = append(c.latencies, time.Since(started))
			}
		}(&callers[i], conns[i%len(conns)])
	}
	wg.Wait()
	elapsed := time.Since(began).Seconds()
	var latencies []time.Duration
	out := result{ByCode: map[string]int{}, Seconds: elapsed}
	for _, c := range callers {
		latencies = append(latencies, c.latencies...)
		for code, n := range c.failed {
			out.ByCode[code] += n
			out.Errors += n
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	out.Ok = len(latencies)
	out.OkPerS = float64(out.Ok) / elapsed
	out.P50Ms, out.P99Ms = quantileMs(latencies, 0.5), quantileMs(latencies, 0.99)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		log.Fatal(err)
	}
}
