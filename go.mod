module github.com/sparselora/sparselora

go 1.26
