package node

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// httpLimits bounds what one client can hold of an HTTP server: a client
// that stalls is cut off, and the connections a listener keeps open are
// capped. A request's answer may take as long as it needs (waits for
// convergence, watch streams, consoles, migrations): only the client's
// sending is timed, so that there is no blanket write timeout.
type httpLimits struct {
	Header         time.Duration // to send the request line and headers
	BodyPause      time.Duration // longest silence while sending a body (uploads may be long, not stalled)
	Idle           time.Duration // a kept-alive connection between requests
	MaxHeaderBytes int
	MaxConns       int // connections open at once per listener; more wait to be accepted
}

// apiLimits are the limits of the API's listeners (hosts keep a watch
// stream open each); hostAPILimits those of an agent's own API, which only
// the servers call.
var (
	apiLimits     = httpLimits{Header: 10 * time.Second, BodyPause: 30 * time.Second, Idle: 2 * time.Minute, MaxHeaderBytes: 64 << 10, MaxConns: 4096}
	hostAPILimits = httpLimits{Header: 10 * time.Second, BodyPause: 30 * time.Second, Idle: time.Minute, MaxHeaderBytes: 64 << 10, MaxConns: 256}
)

// startHTTP serves h on l (over TLS if tlsCfg is set) within lim, and
// returns what stops it. what names the server in the log.
func startHTTP(log *slog.Logger, what string, l net.Listener, tlsCfg *tls.Config, h http.Handler, lim httpLimits) func() {
	hs := &http.Server{
		Handler: bodyDeadlines(h, lim.BodyPause),
		// The whole request's deadline, until bodyDeadlines takes over.
		ReadTimeout:       lim.Header + lim.BodyPause,
		ReadHeaderTimeout: lim.Header,
		IdleTimeout:       lim.Idle,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	l = limitListener(l, lim.MaxConns)
	go func() {
		var err error
		if tlsCfg != nil {
			hs.TLSConfig = tlsCfg.Clone()
			err = hs.ServeTLS(l, "", "")
		} else {
			err = hs.Serve(l)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(what, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
	}
}

// bodyDeadlines times a request's body by its flow rather than as a
// whole, so that a long upload passes and a stalled one does not: each
// read must come within pause of the last one. Once the body is read,
// the read deadline is lifted: the answer may take as long as it needs.
func bodyDeadlines(h http.Handler, pause time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Now().Add(pause))
			r.Body = &flowingBody{ReadCloser: r.Body, rc: rc, pause: pause}
		}
		h.ServeHTTP(w, r)
	})
}

// flowingBody moves the read deadline on with each read of a body.
type flowingBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	pause time.Duration
}

func (b *flowingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case errors.Is(err, io.EOF):
		_ = b.rc.SetReadDeadline(time.Time{})
	case n > 0:
		_ = b.rc.SetReadDeadline(time.Now().Add(b.pause))
	}
	return n, err
}

// limitListener accepts at most n connections open at once: more wait in
// the listen queue until one closes.
func limitListener(l net.Listener, n int) net.Listener {
	return &limitedListener{Listener: l, slots: make(chan struct{}, n), done: make(chan struct{})}
}

type limitedListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitedListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitedConn gives its listener's slot back when it closes, once.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
