package pgsync

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgesync/edgesync/edge"
)

// connect opens the listening connection and LISTENs on the channel.
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
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx) // the connection is done with either way
}

// run receives notifications on conn until ctx is done, reconnecting when the
// connection is lost. conn is nil when the first attempt failed, which
// Subscribe has reported.
func (d *driver) run(ctx context.Context, conn *pgx.Conn, deliver func(edge.Message)) {
	defer close(d.done)
	for {
		if conn == nil {
			if conn = d.reconnect(ctx); conn == nil {
				return
			}
		}
		err := d.receive(ctx, conn, deliver)
		closeConn(conn)
		conn = nil
		if ctx.Err() != nil {
			return
		}
		d.inst.Report(fmt.Errorf("pgsync: channel %q: lost the LISTEN connection, reconnecting: %w", d.channel, err), edge.StageSubscribe)
	}
}

// reconnect tries to connect until it succeeds or ctx is done (nil), waiting
// longer after each failure, up to maxBackoff.
func (d *driver) reconnect(ctx context.Context) *pgx.Conn {
	wait := minBackoff
	timer := time.NewTimer(0) // the first attempt is immediate
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		if conn, err := d.connect(ctx); err == nil {
			return conn
		}
		// Jitter spreads the instances that lost the same server.
		timer.Reset(wait/2 + rand.N(wait/2+1))
		wait = min(2*wait, maxBackoff)
	}
}

// receive delivers the notifications of conn until it fails. After a quiet
// period it pings the server, so that a connection that died without a word
// (a lost network path) is noticed.
func (d *driver) receive(ctx context.Context, conn *pgx.Conn, deliver func(edge.Message)) error {
	for {
		quiet, cancel := context.WithTimeout(ctx, d.quietPeriod)
		busy, err := d.receiveUntil(ctx, quiet, conn, deliver)
		quietEnded := errors.Is(quiet.Err(), context.DeadlineExceeded)
		cancel()
		if !quietEnded || ctx.Err() != nil || conn.IsClosed() {
			return err
		}
		if busy {
			continue
		}
		d.pings.Add(1)
		ping, cancel := context.WithTimeout(ctx, pingTimeout)
		err = conn.Ping(ping)
		cancel()
		if err != nil {
			return fmt.Errorf("no answer to a ping after %v without notifications: %w", d.quietPeriod, err)
		}
	}
}

// receiveUntil delivers the notifications of conn until quiet is done or
// conn fails, and reports whether any arrived.
func (d *driver) receiveUntil(ctx, quiet context.Context, conn *pgx.Conn, deliver func(edge.Message)) (busy bool, err error) {
	for {
		n, err := conn.WaitForNotification(quiet)
		if err != nil {
			return busy, err
		}
		busy = true
		if err := d.handle(ctx, conn, n.Payload, deliver); err != nil {
			return busy, err
		}
	}
}

// handle delivers one notification, or drops it and reports why. It returns
// an error only when conn has failed.
func (d *driver) handle(ctx context.Context, conn *pgx.Conn, payload string, deliver func(edge.Message)) error {
	if len(payload) > d.maxBytes {
		d.drop(len(payload), fmt.Errorf("more than MaxMessageBytes (%d)", d.maxBytes))
		return nil
	}
	if strings.HasPrefix(payload, d.ownPrefix) {
		return nil // our own echo
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
	deliver(msg)
	return nil
}

// drop reports a notification that is not delivered.
func (d *driver) drop(size int, err error) {
	d.inst.Report(fmt.Errorf("pgsync: channel %q: dropped a notification of %d bytes: %w", d.channel, size, err), edge.StageDelivery)
}
