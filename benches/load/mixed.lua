-- Mixed player traffic for wrk: 70 % of requests go to a hot set of 100 recordings (cache
-- hits), 30 % to 1,900 cold ones (misses and evictions); 30 % of all requests are Range
-- requests of 64 KiB at a random offset, as a seeking player sends.
local hot, total = 100, 2000
local account = os.getenv("LOAD_ACCOUNT") or "loadtest0000"

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(tonumber(seed) or os.time())
end

function request()
  local i
  if math.random() < 0.7 then
    i = math.random(0, hot - 1)
  else
    i = math.random(hot, total - 1)
  end
  local headers = { ["Host"] = "edge.local" }
  if math.random() < 0.3 then
    local first = math.random(0, 190000)
    headers["Range"] = "bytes=" .. first .. "-" .. (first + 65535)
  end
  return wrk.format("GET", "/eu1/" .. account .. "/rec-" .. i .. ".mp4", headers)
end
