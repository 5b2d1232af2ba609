package pgsync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/internal/probe"
	"github.com/edgesync/edgesync/internal/reconnect"
)

// connect opens the listening connection and LISTENs on the channel, and in
// a routed cluster on the bucket channel of every routed topic.
func (d *driver) connect(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var conn *pgx.Conn
	if d.listenCfg != nil {
		c, err := pgx.ConnectConfig(ctx, d.listenCfg)
		if err != nil {
			return nil, err
		}
		conn = c
	} else {
		c, err := d.pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		conn = c.Hijack()
	}
	if _, err := conn.Exec(ctx, d.listenSQL); err != nil {
		closeConn(conn)
		return nil, err
	}
	if d.routes != nil {
		d.on = make(listening)
		if _, err := d.apply(ctx, conn, d.on); err != nil {
			closeConn(conn)
			return nil, err
		}
	}
	d.listens.Add(1)
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx) // the connection is done with either way
}

// run receives notifications on conn until ctx is done, reconnecting when the
// connection is lost or found dead. conn is nil when the first attempt
// failed, which Subscribe has reported.
func (d *driver) run(ctx context.Context, conn *pgx.Conn, deliver func(edge.Message)) {
	defer close(d.done)
	backoff := reconnect.Backoff{Min: minBackoff, Max: maxBackoff}
	for {
		if conn == nil {
			if conn = d.reconnect(ctx, &backoff); conn == nil {
				return
			}
		}
		// The outage ends, and the backoff starts again, only once a
		// probe, or a message of another instance, has come back
		// through the new connection: one that
		// connects but receives nothing (another database, a pooler
		// that drops LISTEN) is the same outage.
		err := d.receive(ctx, conn, deliver, func() {
			backoff.Reset()
			d.outage.Restored()
		})
		closeConn(conn)
		conn = nil
		if ctx.Err() != nil {
			return
		}
		d.outage.Lost(fmt.Errorf("pgsync: channel %q: lost the LISTEN connection, reconnecting: %w", d.channel, err))
	}
}

// reconnect tries to connect until it succeeds or ctx is done (nil), waiting
// by backoff between attempts. The first attempt is immediate.
func (d *driver) reconnect(ctx context.Context, backoff *reconnect.Backoff) *pgx.Conn {
	for {
		if conn, err := d.connect(ctx); err == nil {
			return conn
		}
		if !backoff.Wait(ctx) {
			return nil
		}
	}
}

// receive delivers the notifications of conn until it fails or is found
// dead. On a fixed schedule, whatever the traffic, it pings the server on
// conn and checks that the prober's last probe came back in time. It calls
// works once, when the first probe has come back. In a routed cluster, it
// LISTENs on conn on the bucket channels of the routed topics, every one of
// them again on a new connection, and UNLISTENs those that have lingered.
func (d *driver) receive(ctx context.Context, conn *pgx.Conn, deliver func(edge.Message), works func()) error {
	d.probes.Up()
	defer d.probes.Down()
	next := time.Now().Add(d.probePeriod)
	var call func(context.Context, *pgx.Conn) // for a test
	for {
		if works != nil && d.probes.Answered() {
			works()
			works = nil
		}
		until := next
		if due, ok := d.probes.Due(d.timeout); ok && due.Before(until) {
			until = due
		}
		var stopWake func() (bool, func(context.Context, *pgx.Conn))
		wait, cancel := context.WithDeadline(ctx, until)
		if d.routes != nil {
			due, err := d.apply(ctx, conn, d.on)
			if err != nil {
				cancel()
				return err
			}
			if call != nil {
				call(ctx, conn)
				call = nil
			}
			if !due.IsZero() && due.Before(until) {
				cancel()
				wait, cancel = context.WithDeadline(ctx, due)
			}
			stopWake = d.routes.wake(cancel)
		}
		err := d.receiveUntil(ctx, wait, conn, deliver)
		timedOut := errors.Is(wait.Err(), context.DeadlineExceeded)
		woken := false
		if stopWake != nil {
			woken, call = stopWake()
		}
		cancel()
		if ctx.Err() != nil || conn.IsClosed() {
			return err
		}
		if !timedOut && woken {
			continue // to apply what changed
		}
		if !timedOut {
			return err
		}
		now := time.Now()
		if d.probes.Overdue(now, d.timeout) {
			return fmt.Errorf("its own probe did not come back within %v", d.timeout)
		}
		if now.Before(next) {
			continue
		}
		next = now.Add(d.probePeriod)
		d.pings.Add(1)
		ping, cancel := context.WithTimeout(ctx, d.timeout)
		err = conn.Ping(ping)
		cancel()
		if err != nil {
			return fmt.Errorf("no answer to a ping within %v: %w", d.timeout, err)
		}
	}
}

// prober publishes a probe through the pool every interval while the
// listening connection is up, one at a time, for receive to expect back.
func (d *driver) prober(ctx context.Context) {
	d.probes.Run(ctx, d.probe, d.probePeriod, d.timeout, func(ctx context.Context, payload []byte) error {
		_, err := d.pool.Exec(ctx, notifySQL, d.channel, payload)
		return err
	}, d.publishFailed)
}

// publishFailed handles a failed publish. pgx closes a connection whose
// query timed out, and the pool discards it; when the pool is the driver's
// own, its idle connections, opened before the same network fault, are
// discarded too, so that the next publish does not stall on one of them.
func (d *driver) publishFailed(err error) {
	if !d.ownPool || !isTimeout(err) {
		return
	}
	d.pool.Reset()
}

// isTimeout reports whether err is a timeout: a deadline that ran out, or a
// network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// receiveUntil delivers the notifications of conn until wait is done or
// conn fails.
func (d *driver) receiveUntil(ctx, wait context.Context, conn *pgx.Conn, deliver func(edge.Message)) error {
	for {
		n, err := conn.WaitForNotification(wait)
		if err != nil {
			return err
		}
		if err := d.handle(ctx, conn, n.Payload, deliver); err != nil {
			return err
		}
	}
}

// handle delivers one notification, or drops it and reports why. It returns
// an error only when conn has failed.
func (d *driver) handle(ctx context.Context, conn *pgx.Conn, payload string, deliver func(edge.Message)) error {
	d.inst.CountInbound(len(payload)) // every notification, before it is filtered
	if len(payload) > d.maxBytes {
		d.drop(len(payload), fmt.Errorf("more than MaxMessageBytes (%d)", d.maxBytes))
		return nil
	}
	if strings.HasPrefix(payload, d.ownPrefix) {
		return nil // our own echo
	}
	if probe.Is(payload) {
		// Never delivered: one of ours is expected back.
		if n, ok := probe.Parse(payload, d.probe); ok {
			d.probes.Got(n)
		}
		return nil
	}
	d.rbuf = append(d.rbuf[:0], payload...) // Decode keeps no reference to it
	raw := d.rbuf
	if strings.HasPrefix(payload, refMarker) {
		body, err := d.resolveReference(ctx, conn, raw)
		if err != nil {
			if conn.IsClosed() {
				return err
			}
			d.drop(len(payload), err)
			return nil
		}
		if body == nil {
			return nil // our own echo
		}
		raw = body
	}
	id, msg, err := d.signer.Decode(raw)
	if err != nil {
		d.drop(len(raw), err)
		return nil
	}
	if id == d.inst.ID {
		return nil
	}
	d.probes.Heard()
	if d.routes != nil && !d.routes.wants(msg.Topic) {
		return nil // another topic of the bucket, or one unrouted since
	}
	deliver(msg)
	return nil
}

// drop reports a notification that is not delivered.
func (d *driver) drop(size int, err error) {
	d.inst.Report(fmt.Errorf("pgsync: channel %q: dropped a notification of %d bytes: %w", d.channel, size, err), edge.StageDelivery)
}
