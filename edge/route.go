package edge

// RoutedDriver is a Driver that relays by topic: instead of receiving every
// message of the channel (broadcast, what crossws speaks), an instance
// receives only the topics it routes. The Hub routes a topic when it gains
// its first local subscriber, in any namespace, and unroutes it when it
// loses its last one; it routes each member's own topic (PeerTopicPrefix
// and its id) while the member is joined, so that SendTo reaches it.
//
// A message is published to its topic's route whatever its namespace, and
// the receiving Hub delivers by namespace as always, so a namespace-wide
// publish (Namespace "") still reaches every instance that routes its
// topic.
type RoutedDriver interface {
	Driver
	// Route says that this instance now wants the messages of topic
	// (want is true) or no longer wants them. Calls for one topic
	// alternate, starting with true. Route is called with the Hub's lock
	// held: it must not block and must not call back into the Hub. A
	// driver applies it in the background, keeping a topic that stays
	// routed subscribed throughout, and may keep an unrouted one for a
	// short while, so that a topic that flaps costs nothing.
	Route(topic string, want bool)
}

// route tells a RoutedDriver that topic is wanted or not. h.mu is held for
// writing.
func (h *Hub) route(topic string, want bool) {
	if h.router == nil {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			h.report(&PanicError{Value: v}, StageSubscribe)
		}
	}()
	h.router.Route(topic, want)
}

// topicGained counts a namespace in which topic got its first local
// subscriber, routing the topic when it is the first. h.mu is held for
// writing.
func (h *Hub) topicGained(topic string) {
	if h.router == nil {
		return
	}
	h.topicRefs[topic]++
	if h.topicRefs[topic] == 1 {
		h.route(topic, true)
	}
}

// topicLost counts a namespace in which topic lost its last local
// subscriber, unrouting the topic when it was the last. h.mu is held for
// writing.
func (h *Hub) topicLost(topic string) {
	if h.router == nil {
		return
	}
	if h.topicRefs[topic]--; h.topicRefs[topic] <= 0 {
		delete(h.topicRefs, topic)
		h.route(topic, false)
	}
}
