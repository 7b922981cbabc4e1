"""The load generator behind ``trio-echo bench``: a runner and its epoll worker processes."""
