module kubelambda.local/pause

go 1.24
