//go:build !linux

package main

func preventDumps() {}
