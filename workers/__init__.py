"""Celery workers that run facejobs' jobs on GPUs and CPUs."""
