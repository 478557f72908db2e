module kubelambda.io/agent

go 1.26
