module github.com/edgesync/edgesync

go 1.26.0
