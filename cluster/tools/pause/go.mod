// The pod sandbox ("pause") image's program, built by cluster/parts.py
module kuberlhf.dev/cluster/pause

go 1.26.0
