# The Lambda front end of examples/chat-lambda, built for the provided.al2023
# runtime on arm64. "sam build" runs build-ChatFunction with ARTIFACTS_DIR set;
# "make bootstrap" builds the same binary here, as ./bootstrap.

GOBUILD = GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -tags lambda.norpc -trimpath -ldflags='-s -w'

.PHONY: build-ChatFunction bootstrap

build-ChatFunction:
	$(if $(ARTIFACTS_DIR),,$(error ARTIFACTS_DIR is not set; sam build sets it))
	$(GOBUILD) -o $(ARTIFACTS_DIR)/bootstrap ./examples/chat-lambda

bootstrap:
	$(GOBUILD) -o ./bootstrap ./examples/chat-lambda
