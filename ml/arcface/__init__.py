"""Sharded ArcFace ("partial FC"): class weights split across `torch.distributed` ranks."""
