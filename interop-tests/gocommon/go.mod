module github.com/p2p-interop-tests/gocommon

go 1.22
