-- Argo CD health check for the edgetune.io custom resources (FinetuneJob, ModelConversion,
-- EdgeBenchmark). Argo CD runs it with gopher-lua (Lua 5.1) and the resource as `obj`;
-- the same script serves the three kinds (see argocd-cm.yaml, checked by the tests).
--   Degraded     .status.phase Failed, or condition Failed=True
--   Healthy      .status.phase Succeeded, or condition Ready=True
--   Progressing  no status yet, a spec change the operator has not seen, Pending/Waiting/Running
-- The message is the deciding condition's message (or the phase when there is none).
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

-- The first non-empty message of the given conditions (any of which may be nil).
local function first_message(...)
  for i = 1, select("#", ...) do
    local c = select(i, ...)
    if c ~= nil and c.message ~= nil and c.message ~= "" then
      return c.message
    end
  end
  return nil
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the edgetune operator to pick up the resource"
  return hs
end

local phase = status.phase or ""
local ready = condition(status, "Ready")
local failed = condition(status, "Failed")

if phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  hs.message = first_message(failed, ready) or status.message or ("phase " .. phase)
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if phase == "Succeeded" or (ready ~= nil and ready.status == "True") then
  hs.status = "Healthy"
  hs.message = first_message(ready) or status.message or "Succeeded"
  return hs
end

-- Pending, Waiting, Running (or a phase this script does not know yet): still on its way.
hs.status = "Progressing"
local latest = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.message ~= nil and c.message ~= "" and (latest == nil or (c.lastTransitionTime or "") >= (latest.lastTransitionTime or "")) then
      latest = c
    end
  end
end
hs.message = first_message(ready, latest) or status.message or (phase ~= "" and ("phase " .. phase)) or "Waiting for the operator"
return hs
