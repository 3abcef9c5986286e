#!/usr/bin/env bash
# Starts or stops a throwaway redis-server for the tests: 127.0.0.1 only, a
# free port above 20000, no persistence, everything under DIR.
#   redis_server.sh start DIR [PORT]   prints the port; DIR/port holds it too
#   redis_server.sh stop DIR
set -euo pipefail
cmd=$1 dir=$2
server=${REDIS_SERVER:-redis-server}
cli=${REDIS_CLI:-redis-cli}
case "$cmd" in
  start)
    mkdir -p "$dir"
    for attempt in $(seq 1 50); do
      port=${3:-$((20000 + (RANDOM * 32768 + RANDOM) % 40000))}
      rm -f "$dir/redis.pid"
      if "$server" --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
          --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log" \
          --protected-mode yes >/dev/null 2>&1; then
        for _ in $(seq 1 100); do
          if "$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            echo "$port" >"$dir/port"
            echo "$port"
            exit 0
          fi
          [ -s "$dir/redis.pid" ] && ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null && break
          sleep 0.05
        done
      fi
      [ -n "${3:-}" ] && break  # a fixed port: no other to try
    done
    echo "redis_server.sh: could not start $server (see $dir/redis.log)" >&2
    exit 1
    ;;
  stop)
    if [ -s "$dir/redis.pid" ]; then
      pid=$(cat "$dir/redis.pid")
      # redis-server removes its pid file when it exits (a zombie left to a
      # container's init would still answer kill -0).
      [ -s "$dir/port" ] && "$cli" -h 127.0.0.1 -p "$(cat "$dir/port")" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do [ -e "$dir/redis.pid" ] || break; sleep 0.05; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/redis.pid"
    fi
    ;;
  *) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
