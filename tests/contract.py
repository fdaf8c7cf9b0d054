"""Values restated verbatim from the contract (../shared/spec/knative-contract.md), so tests check
the code against the spec rather than against itself."""

# §10: Knative's default request-log template (HEAD) and the v1.18 one.
HEAD_TEMPLATE = (
    '{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": '
    '"{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": '
    '{{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": '
    '"{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": '
    '"{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": '
    '"{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}'
)
V118_TEMPLATE = HEAD_TEMPLATE.replace(
    '"{{.TraceID}}"', '"{{index .Request.Header "X-B3-Traceid"}}"'
)
