# Helpers the bench scripts share; sourced, not run.

# A free loopback port (bound, read back, released).
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Waits up to 20 s until something accepts on 127.0.0.1:$1.
wait_port() { for _ in $(seq 400); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# CPU seconds (user + system) process $1 has used so far.
cpu() { awk '{printf "%.3f", ($14 + $15) / 100}' "/proc/$1/stat"; }
