// gateway-grpc: the gRPC transport of one Bento worker's Open Inference Protocol service.
//
// It terminates HTTP/2 and gRPC on the shared gRPC port (SO_REUSEPORT, one per worker, like
// the worker's HTTP data plane) and hands every call, unparsed, to its worker over a Unix
// socket: the method's path and the request's protobuf bytes go in, a status and the response's
// bytes come back. Everything the protocol means (parsing, tensors, validation, the batcher,
// error mapping) stays in the worker's Python code; this program only moves bytes. Calls that
// arrive while the worker is busy leave in one write, so the worker reads many per wake-up.
//
// The calls handed on are the inference service's and the health check
// (grpc.health.v1.Health/Check), so the worker decides health as it decides ServerReady. Watch,
// a stream, is not carried: it is Unimplemented, which the health protocol lets a server say.
//
// While the worker's queue is full it says so (a frame with call id 0), and ModelInfer calls are
// refused here, before they are read: a shed call costs the worker nothing. The front counts them
// back to the worker for its metrics.
//
// The frames on the socket are laid out in gateway/oip/frames.py.
package main

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	service     = "/inference.GRPCInferenceService/"
	healthCheck = "/grpc.health.v1.Health/Check"
	healthWatch = "/grpc.health.v1.Health/Watch"
	infer       = service + "ModelInfer"
	apiKeyName  = "x-api-key"
	stateID     = 0 // the call id of the queue-state frames; calls are numbered from 1
	shedMethod  = "shed"
)

// message is a protobuf message left as bytes: the worker parses and writes them.
type message struct{ data []byte }

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.(*message).data, nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	v.(*message).data = append([]byte(nil), data...)
	return nil
}

func (rawCodec) String() string { return "proto" }

type reply struct {
	code    codes.Code
	details string
	header  metadata.MD
	body    []byte
}

// worker is the link to the Python worker: calls waiting for their reply, by id.
type worker struct {
	conn    net.Conn
	out     chan []byte
	next    uint64
	mu      sync.Mutex
	pending map[uint64]chan reply
	apiKey  string
	full    atomic.Pointer[reply] // the refusal of every ModelInfer while the queue is full
	shed    atomic.Uint64         // calls refused so, not yet counted back to the worker
}

func newWorker(conn net.Conn) *worker {
	w := &worker{conn: conn, out: make(chan []byte, 4096), pending: map[uint64]chan reply{}}
	go w.write()
	go w.read()
	return w
}

// write sends frames as they come, flushing only when no other frame is waiting.
func (w *worker) write() {
	buf := bufio.NewWriterSize(w.conn, 1<<18)
	for frame := range w.out {
		buf.Write(frame)
		for drained := false; !drained; {
			select {
			case frame = <-w.out:
				buf.Write(frame)
			default:
				drained = true
			}
		}
		if err := buf.Flush(); err != nil {
			log.Fatalf("gateway-grpc: writing to the worker: %v", err)
		}
	}
}

// read delivers each reply to its waiting call; the worker closing the link ends the program.
func (w *worker) read() {
	in := bufio.NewReaderSize(w.conn, 1<<18)
	head := make([]byte, 4)
	for {
		if _, err := io.ReadFull(in, head); err != nil {
			if errors.Is(err, io.EOF) {
				log.Printf("gateway-grpc: the worker closed the link")
				os.Exit(0)
			}
			log.Fatalf("gateway-grpc: reading from the worker: %v", err)
		}
		frame := make([]byte, binary.BigEndian.Uint32(head))
		if _, err := io.ReadFull(in, frame); err != nil {
			log.Fatalf("gateway-grpc: reading from the worker: %v", err)
		}
		id, r, err := parseReply(frame)
		if err != nil {
			log.Fatalf("gateway-grpc: %v", err)
		}
		if id == stateID {
			if r.code == codes.OK {
				w.full.Store(nil)
				w.countShed()
			} else {
				w.full.Store(&r)
			}
			continue
		}
		w.mu.Lock()
		waiting, ok := w.pending[id]
		delete(w.pending, id)
		w.mu.Unlock()
		if ok { // else the caller gave up (cancelled, deadline) before the answer came
			waiting <- r
		}
	}
}

func parseReply(frame []byte) (uint64, reply, error) {
	if len(frame) < 17 {
		return 0, reply{}, fmt.Errorf("a reply frame of %d bytes", len(frame))
	}
	id := binary.BigEndian.Uint64(frame)
	code := codes.Code(frame[8])
	nd := int(binary.BigEndian.Uint32(frame[9:]))
	nm := int(binary.BigEndian.Uint32(frame[13:]))
	rest := frame[17:]
	if nd+nm > len(rest) {
		return 0, reply{}, fmt.Errorf("a reply frame shorter than its lengths")
	}
	r := reply{code: code, details: string(rest[:nd]), body: rest[nd+nm:]}
	if nm > 0 {
		pairs := strings.Split(strings.TrimSuffix(string(rest[nd:nd+nm]), "\x00"), "\x00")
		if len(pairs)%2 != 0 {
			return 0, reply{}, fmt.Errorf("odd metadata in a reply frame")
		}
		r.header = metadata.Pairs(pairs...)
	}
	return id, r, nil
}

func callFrame(id uint64, method string, request []byte) []byte {
	frame := make([]byte, 13+len(method)+len(request))
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
	binary.BigEndian.PutUint64(frame[4:], id)
	frame[12] = byte(len(method))
	copy(frame[13:], method)
	copy(frame[13+len(method):], request)
	return frame
}

// countShed tells the worker how many calls were shed here since it was last told.
func (w *worker) countShed() {
	if n := w.shed.Swap(0); n > 0 {
		w.out <- callFrame(stateID, shedMethod, binary.BigEndian.AppendUint64(nil, n))
	}
}

func (w *worker) call(ctx context.Context, method string, request []byte) (reply, error) {
	id := atomic.AddUint64(&w.next, 1)
	waiting := make(chan reply, 1)
	w.mu.Lock()
	w.pending[id] = waiting
	w.mu.Unlock()
	w.out <- callFrame(id, method, request)
	select {
	case r := <-waiting:
		return r, nil
	case <-ctx.Done():
		w.mu.Lock()
		delete(w.pending, id)
		w.mu.Unlock()
		return reply{}, status.FromContextError(ctx.Err()).Err()
	}
}

// authorize refuses a prediction without the configured API key (GATEWAY_API_KEY, as the
// worker reads it): UNAUTHENTICATED without one, PERMISSION_DENIED with another.
func (w *worker) authorize(ctx context.Context) error {
	if w.apiKey == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	sent := md.Get(apiKeyName)
	if len(sent) == 0 || sent[0] == "" {
		return status.Error(codes.Unauthenticated, "an API key (the x-api-key metadata) is required")
	}
	if subtle.ConstantTimeCompare([]byte(sent[0]), []byte(w.apiKey)) != 1 {
		return status.Error(codes.PermissionDenied, "an API key (the x-api-key metadata) is not valid")
	}
	return nil
}

// handle serves every unary method of the service, and the health check, by asking the worker.
func (w *worker) handle(_ interface{}, stream grpc.ServerStream) error {
	full, ok := grpc.MethodFromServerStream(stream)
	if full == healthWatch {
		return status.Error(codes.Unimplemented, "health Watch is not served here: call Check")
	}
	if !ok || !(strings.HasPrefix(full, service) || full == healthCheck) || len(full) > 255 {
		return status.Errorf(codes.Unimplemented, "unknown method %s", full)
	}
	if full == infer {
		if err := w.authorize(stream.Context()); err != nil {
			return err
		}
		if r := w.full.Load(); r != nil { // shed unread: the worker's queue is full
			w.shed.Add(1)
			if len(r.header) > 0 {
				if err := stream.SetHeader(r.header); err != nil {
					return err
				}
			}
			return status.Error(r.code, r.details)
		}
	}
	var request message
	if err := stream.RecvMsg(&request); err != nil {
		return err
	}
	r, err := w.call(stream.Context(), full, request.data)
	if err != nil {
		return err
	}
	if len(r.header) > 0 {
		if err := stream.SetHeader(r.header); err != nil {
			return err
		}
	}
	if r.code != codes.OK {
		return status.Error(r.code, r.details)
	}
	return stream.SendMsg(&message{data: r.body})
}

func listen(address string) (net.Listener, error) {
	config := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error {
		var inner error
		err := raw.Control(func(fd uintptr) {
			inner = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return inner
	}}
	return config.Listen(context.Background(), "tcp", address)
}

// watchParent ends the program once the worker that started it is gone.
func watchParent(parent int) {
	for range time.Tick(time.Second) {
		if os.Getppid() != parent {
			log.Printf("gateway-grpc: worker %d is gone", parent)
			os.Exit(0)
		}
	}
}

func main() {
	address := flag.String("listen", "127.0.0.1:3002", "host:port to serve gRPC on")
	backend := flag.String("worker", "", "the worker's Unix socket")
	parent := flag.Int("parent", 0, "exit when this process (the worker) is gone")
	maxMessage := flag.Int("max-message", 64<<20, "largest message accepted or sent, in bytes")
	flag.Parse()
	log.SetFlags(0)
	// One worker's transport needs less than a core: with one thread, handing a call from one
	// goroutine to another costs no wake-up of another thread. Garbage is short-lived bytes,
	// so the collector may wait for the heap to grow four-fold.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if *backend == "" {
		log.Fatal("gateway-grpc: -worker SOCKET is required")
	}
	conn, err := net.Dial("unix", *backend)
	if err != nil {
		log.Fatalf("gateway-grpc: cannot reach the worker at %s: %v", *backend, err)
	}
	lis, err := listen(*address)
	if err != nil {
		log.Fatalf("gateway-grpc: cannot bind the gRPC port %s: %v", *address, err)
	}
	w := newWorker(conn)
	w.apiKey = os.Getenv("GATEWAY_API_KEY")
	server := grpc.NewServer(
		grpc.CustomCodec(rawCodec{}),
		grpc.UnknownServiceHandler(w.handle),
		grpc.MaxRecvMsgSize(*maxMessage),
		grpc.MaxSendMsgSize(*maxMessage),
	)
	if *parent != 0 {
		go watchParent(*parent)
	}
	go func() { // a queue that stays full still has its shed calls counted
		for range time.Tick(time.Second) {
			w.countShed()
		}
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		done := make(chan struct{})
		go func() { server.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			server.Stop()
		}
		os.Exit(0)
	}()
	fmt.Printf("listening on %s\n", lis.Addr())
	if err := server.Serve(lis); err != nil {
		log.Fatalf("gateway-grpc: %v", err)
	}
}
