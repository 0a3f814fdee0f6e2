module spo.local/pause

go 1.22
