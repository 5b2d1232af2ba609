package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A private cluster serves a key on every master, and after a master is
// killed its replica takes over and the key's slot is served again.
func TestStartRedisClusterFailsOver(t *testing.T) {
	c := StartRedisCluster(t)
	masters := c.Masters(t)
	if len(masters) != 3 || len(c.Addrs()) != 6 {
		t.Fatalf("masters %v of nodes %v, want 3 of 6", masters, c.Addrs())
	}
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), RedisClusterTimeout)
	defer cancel()
	if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET on the cluster: %v", err)
	}
	owner, err := client.MasterForKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	replica := c.KillMaster(t, owner.Options().Addr)
	c.AwaitPromoted(t, replica)
	if got := c.Masters(t); len(got) != 3 {
		t.Errorf("masters after the failover: %v, want 3", got)
	}
	deadline := time.Now().Add(RedisClusterTimeout)
	for {
		err := client.Set(ctx, "k", "w", 0).Err()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SET after the failover: %v", err)
		}
		client.ReloadState(ctx)
		time.Sleep(50 * time.Millisecond)
	}
}

// RedisCluster gives the same running cluster to every test of the binary.
func TestRedisClusterIsShared(t *testing.T) {
	a, b := RedisCluster(t), RedisCluster(t)
	if len(a) == 0 || a[0] != b[0] {
		t.Fatalf("RedisCluster gave %v, then %v", a, b)
	}
	if !reachable(a) {
		t.Fatalf("the nodes %v do not answer", a)
	}
}
