package main

import (
	"testing"

	"github.com/edgesync/edgesync/internal/testenv"
)

func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }
