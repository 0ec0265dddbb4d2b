use super::*;

/// Feeds `body` in chunks of `step` bytes (0 = whole) and merges what was reported.
fn scan(provider: &str, body: &[u8], step: usize) -> (usize, Vec<StreamError>, bool, SseScanner) {
    let mut s = SseScanner::new(provider);
    let mut firsts = 0;
    let mut errors = Vec::new();
    let mut terminal = false;
    let step = if step == 0 { body.len().max(1) } else { step };
    let mut results: Vec<ScanResult> = body.chunks(step).map(|c| s.feed(c)).collect();
    results.push(s.finish());
    for r in results {
        firsts += usize::from(r.first_content);
        errors.extend(r.error);
        terminal |= r.terminal;
    }
    (firsts, errors, terminal, s)
}

fn all_chunkings(provider: &str, body: &str) -> (bool, Vec<StreamError>, bool) {
    let whole = scan(provider, body.as_bytes(), 0);
    for step in [1, 2, 3, 7, 64] {
        let other = scan(provider, body.as_bytes(), step);
        assert_eq!(
            (other.0, &other.1, other.2),
            (whole.0, &whole.1, whole.2),
            "step {step}"
        );
    }
    assert!(whole.0 <= 1);
    assert_eq!(whole.3.saw_content(), whole.0 == 1);
    assert_eq!(whole.3.saw_terminal(), whole.2);
    (whole.0 == 1, whole.1, whole.2)
}

#[test]
fn anthropic_clean_stream() {
    let body = "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"event: error\\ndata: {\\\"error\\\": 429}\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    assert_eq!(all_chunkings("anthropic", body), (true, vec![], true));
}

#[test]
fn anthropic_error_first_is_retryable() {
    let body = "event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\nevent: error\r\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Rate limited. Please try again in 12s.\"}}\r\n\r\n";
    let (content, errors, terminal) = all_chunkings("anthropic", body);
    assert!(!content && !terminal);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
    assert_eq!(errors[0].verdict.hint.map(|h| h.after.as_secs()), Some(12));
    assert!(!errors[0].after_content);
}

#[test]
fn openai_role_only_chunk_is_not_content() {
    let role = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}]}\n\n";
    let err = "data: {\"error\":{\"message\":\"Rate limit reached for gpt-4o. Please try again in 1.5s.\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n";
    let (content, errors, _) = all_chunkings("openai", &format!("{role}{err}"));
    assert!(!content);
    assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
    assert!(!errors[0].after_content);

    let text = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"error\"},\"finish_reason\":null}]}\n\n";
    let tool = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n";
    let (content, errors, terminal) =
        all_chunkings("openai", &format!("{role}{text}{tool}data: [DONE]\n\n"));
    assert!(content && errors.is_empty() && terminal);
    let (content, _, _) = all_chunkings("openai", &format!("{role}{tool}"));
    assert!(content);
}

#[test]
fn openrouter_finish_reason_error_after_content() {
    let body = ": OPENROUTER PROCESSING\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}],\"error\":{\"code\":429,\"message\":\"Provider returned error\"}}\n\n";
    let (content, errors, terminal) = all_chunkings("openrouter", body);
    assert!(content && !terminal);
    assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
    assert!(errors[0].after_content);
    // finish_reason "error" without an error object is still an error.
    let body = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"error\"}]}\n\n";
    let (_, errors, _) = all_chunkings("openrouter", body);
    assert_eq!(errors[0].verdict.reason, Reason::Unknown);
}

#[test]
fn responses_api_events() {
    let body = "event: response.created\ndata: {\"type\":\"response.created\"}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
    assert_eq!(all_chunkings("openai", body), (true, vec![], true));
    let failed = "event: response.created\ndata: {}\n\nevent: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"rate_limit_exceeded\",\"message\":\"Rate limit reached. Please try again in 20s.\"}}}\n\n";
    let (content, errors, _) = all_chunkings("azure", failed);
    assert!(!content);
    assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
    assert_eq!(errors[0].verdict.hint.map(|h| h.after.as_secs()), Some(20));
    // The documented flat error event shape.
    let flat = "event: error\ndata: {\"type\":\"error\",\"code\":\"server_is_overloaded\",\"message\":\"busy\",\"param\":null}\n\n";
    assert_eq!(
        all_chunkings("openai", flat).1[0].verdict.reason,
        Reason::Overloaded
    );
    // Without event lines, the leading "type" names the event.
    let bare = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\ndata: {\"type\":\"response.completed\"}\n\n";
    assert_eq!(all_chunkings("openai", bare), (true, vec![], true));
}

#[test]
fn gemini_candidates() {
    let body = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}],\"role\": \"model\"},\"index\": 0}]}\r\n\r\ndata: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" there\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}]}\r\n\r\n";
    assert_eq!(all_chunkings("google", body), (true, vec![], true));
    let err = "data: {\"error\": {\"code\": 429, \"message\": \"Resource has been exhausted (e.g. check quota).\", \"status\": \"RESOURCE_EXHAUSTED\"}}\n\n";
    assert_eq!(
        all_chunkings("google", err).1[0].verdict.reason,
        Reason::RateLimit
    );
}

#[test]
fn overlong_lines_are_dropped_without_growing() {
    let long = "x".repeat(LINE_LIMIT * 3);
    let body = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{long}\"}}}}]}}\n\nevent: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\"}}}}\n\n");
    let (content, errors, _) = all_chunkings("openai", &body);
    assert!(!content);
    assert_eq!(errors[0].verdict.reason, Reason::Overloaded);
    let mut s = SseScanner::new("openai");
    for c in body.as_bytes().chunks(1000) {
        s.feed(c);
        assert!(s.carry.capacity() <= 2 * LINE_LIMIT);
    }
}

#[test]
fn finish_dispatches_an_open_event() {
    let body = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";
    let (_, errors, _) = all_chunkings("anthropic", body);
    assert_eq!(errors[0].verdict.reason, Reason::Overloaded);
}

#[test]
fn bedrock_event_stream_exception() {
    use crate::classify::eventstream::tests::encode_frame;
    let mut body = encode_frame(
        &[
            (":message-type", "event"),
            (":event-type", "contentBlockDelta"),
        ],
        b"{}",
    );
    body.extend(encode_frame(
        &[
            (":message-type", "exception"),
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
        ],
        br#"{"message":"Too many requests, please wait before trying again."}"#,
    ));
    for step in [1, 7, body.len()] {
        let (firsts, errors, terminal, _) = scan("bedrock", &body, step);
        assert_eq!(firsts, 1);
        assert!(!terminal);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
        assert!(errors[0].after_content);
    }
    for (exception, reason) in [
        ("serviceUnavailableException", Reason::Overloaded),
        ("modelStreamErrorException", Reason::Unknown),
        ("validationException", Reason::Format),
    ] {
        let other = encode_frame(
            &[
                (":message-type", "exception"),
                (":exception-type", exception),
            ],
            br#"{"message":"x"}"#,
        );
        assert_eq!(
            scan("bedrock", &other, 3).1[0].verdict.reason,
            reason,
            "{exception}"
        );
    }
}

#[test]
fn default_and_unknown_event_names() {
    // `event: message` is the default type: read like a data-only chunk.
    let body = "event: message\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    assert!(all_chunkings("together", body).0);
    // An unknown named event carrying an error object.
    let body = "event: weird\ndata: {\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}\n\nevent: weird\ndata: {\"note\":\"error\"}\n\n";
    let (_, errors, _) = all_chunkings("custom", body);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
    // Cohere v2.
    let body = "event: message-start\ndata: {}\n\nevent: content-delta\ndata: {\"delta\":{}}\n\nevent: message-end\ndata: {}\n\n";
    assert_eq!(all_chunkings("cohere", body), (true, vec![], true));
    // Legacy completions.
    let body = "data: {\"choices\":[{\"text\":\"Hello\",\"index\":0}]}\n\ndata: [DONE]\n\n";
    assert_eq!(all_chunkings("openai", body), (true, vec![], true));
}

#[test]
fn unknown_shapes_stop_being_parsed() {
    let mut body = String::new();
    for _ in 0..100 {
        body.push_str("data: {\"tick\":1}\n\n");
    }
    body.push_str("data: {\"error\":{\"message\":\"Too many requests\"}}\n\n");
    let (content, errors, _) = all_chunkings("custom", &body);
    assert!(!content);
    assert_eq!(errors[0].verdict.reason, Reason::RateLimit);
    let mut s = SseScanner::new("custom");
    s.feed(body.as_bytes());
    assert_eq!(s.probe_budget, 0);
}
