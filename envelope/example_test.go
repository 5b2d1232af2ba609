package envelope_test

import (
	"errors"
	"fmt"

	"github.com/edgesync/edgesync/edge"
	"github.com/edgesync/edgesync/envelope"
)

func ExampleEncode() {
	text, _ := envelope.Encode("instance-1", edge.Message{
		Namespace: "/_ws",
		Topic:     "chat",
		Data:      edge.Text(`{"text":"hi"}`),
	})
	fmt.Println(string(text))

	binary, _ := envelope.Encode("instance-1", edge.Message{
		Namespace: "/_ws",
		Topic:     "chat",
		Data:      edge.Binary([]byte{0, 1, 2, 0xfe, 0xff}),
	})
	fmt.Println(string(binary))
	// Output:
	// {"id":"instance-1","msg":{"namespace":"/_ws","topic":"chat","binary":false,"data":"{\"text\":\"hi\"}"}}
	// {"id":"instance-1","msg":{"namespace":"/_ws","topic":"chat","binary":true,"data":"AAEC/v8="}}
}

func ExampleAppendEncode() {
	var buf []byte // reused from one message to the next
	for _, topic := range []string{"a", "b"} {
		buf, _ = envelope.AppendEncode(buf[:0], "instance-1", edge.Message{Topic: topic, Data: edge.Text("hi")})
		fmt.Println(string(buf))
	}
	// Output:
	// {"id":"instance-1","msg":{"namespace":"","topic":"a","binary":false,"data":"hi"}}
	// {"id":"instance-1","msg":{"namespace":"","topic":"b","binary":false,"data":"hi"}}
}

func ExampleDecode() {
	// An envelope as a crossws instance publishes it.
	raw := []byte(`{"id":"node-7","msg":{"namespace":"/_ws","topic":"chat","binary":true,"data":"aGk="}}`)
	id, m, err := envelope.Decode(raw)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("from %s: %s %s binary=%v %q\n", id, m.Namespace, m.Topic, m.Data.Binary, m.Data.Bytes)

	_, _, err = envelope.Decode([]byte(`{"id":"node-7","msg":{"namespace":"/_ws","topic":7,"data":"hi"}}`))
	fmt.Println(err)
	fmt.Println(errors.Is(err, envelope.ErrMalformed))
	// Output:
	// from node-7: /_ws chat binary=true "hi"
	// envelope: malformed: msg.topic is not a string (got number)
	// true
}
