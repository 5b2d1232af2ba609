package routes_test

import (
	"fmt"
	"time"

	"github.com/edgesync/edgesync/internal/routes"
)

func ExampleTable() {
	// Topics map to buckets by their length.
	tab := routes.New(func(topic string) int { return len(topic) }, time.Second, nil)
	tab.Route("room", true)
	tab.Route("hall", true) // shares the bucket of "room"
	sub, _, _ := tab.Take(time.Now())
	fmt.Println("subscribe", sub)
	tab.Route("room", false)
	tab.Route("hall", false)
	_, release, _ := tab.Take(time.Now().Add(time.Minute))
	fmt.Println("release", release)
	// Output:
	// subscribe [4]
	// release [4]
}
