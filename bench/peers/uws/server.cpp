// A peer server for side-by-side measurements (issue 12): the `/ws`
// pub/sub subset of ringcast's wire contract (docs/protocol.md) on
// uWebSockets, written the way a uWebSockets user would write it: one App
// on one loop, its own topic tree (`ws->subscribe`, `app.publish`) for the
// fan-out. See ../README.md for what is implemented and what is not.
//
//   uws-peer PORT        listens on 127.0.0.1:PORT
//
// Commands, one JSON object per text frame:
//   subscribe   {"op":"subscribe","topic":T[,"id":I]}
//               -> {"op":"subscribed","topic":T,"epoch":E[,"id":I]}
//   unsubscribe -> {"op":"unsubscribed","topic":T[,"id":I]}
//   publish     {"op":"publish","topic":T,"data":D[,"id":I]}
//               -> every subscriber of T: {"op":"message","topic":T,"seq":N,"data":D}
//               -> with an id, the publisher: {"op":"published","topic":T,"seq":N,"id":I}
// Anything else gets {"op":"error","code":C,"message":M}.

#include "App.h"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

// One command's fields, as spans of the frame. `data` and `id` are raw
// JSON values (copied to the replies byte for byte); `op` and `topic` are
// the contents of JSON strings.
struct Command {
    std::string_view op, topic, data, id;
    bool has_op = false, has_topic = false, topic_escaped = false;
};

struct Scanner {
    const char *p, *end;

    void ws() {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    }

    // A JSON string at p (after its opening quote): its raw contents.
    bool string(std::string_view &out, bool &escaped) {
        const char *start = p;
        escaped = false;
        while (p < end) {
            unsigned char c = (unsigned char) *p;
            if (c == '"') {
                out = std::string_view(start, (size_t) (p - start));
                p++;
                return true;
            }
            if (c < 0x20) return false;
            if (c == '\\') {
                escaped = true;
                p++;
                if (p >= end) return false;
            }
            p++;
        }
        return false;
    }

    // Skips one JSON value, checking its structure (brackets balanced,
    // strings closed, literals and numbers made of their characters).
    bool value(int depth = 0) {
        ws();
        if (p >= end || depth > 128) return false;
        char c = *p;
        if (c == '"') {
            p++;
            std::string_view s;
            bool e;
            return string(s, e);
        }
        if (c == '{' || c == '[') {
            char close = c == '{' ? '}' : ']';
            p++;
            ws();
            if (p < end && *p == close) {
                p++;
                return true;
            }
            for (;;) {
                if (c == '{') {
                    ws();
                    if (p >= end || *p != '"') return false;
                    p++;
                    std::string_view k;
                    bool e;
                    if (!string(k, e)) return false;
                    ws();
                    if (p >= end || *p != ':') return false;
                    p++;
                }
                if (!value(depth + 1)) return false;
                ws();
                if (p >= end) return false;
                if (*p == ',') {
                    p++;
                    continue;
                }
                if (*p == close) {
                    p++;
                    return true;
                }
                return false;
            }
        }
        const char *start = p;
        while (p < end && (std::isalnum((unsigned char) *p) || *p == '-' || *p == '+' || *p == '.')) p++;
        std::string_view lit(start, (size_t) (p - start));
        if (lit.empty()) return false;
        if (lit == "true" || lit == "false" || lit == "null") return true;
        return lit[0] == '-' || (lit[0] >= '0' && lit[0] <= '9');
    }
};

// Parses the top-level object. False: not a JSON object.
bool parse_command(std::string_view frame, Command &cmd) {
    Scanner s{frame.data(), frame.data() + frame.size()};
    s.ws();
    if (s.p >= s.end || *s.p != '{') return false;
    s.p++;
    s.ws();
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            s.ws();
            if (s.p >= s.end || *s.p != '"') return false;
            s.p++;
            std::string_view key;
            bool key_escaped;
            if (!s.string(key, key_escaped)) return false;
            s.ws();
            if (s.p >= s.end || *s.p != ':') return false;
            s.p++;
            s.ws();
            const char *vstart = s.p;
            bool is_string = s.p < s.end && *s.p == '"';
            if (!s.value()) return false;
            std::string_view raw(vstart, (size_t) (s.p - vstart));
            if (key == "op" && is_string) {
                cmd.op = raw.substr(1, raw.size() - 2);
                cmd.has_op = true;
            } else if (key == "topic" && is_string) {
                cmd.topic = raw.substr(1, raw.size() - 2);
                cmd.topic_escaped = cmd.topic.find('\\') != std::string_view::npos;
                cmd.has_topic = true;
            } else if (key == "data") {
                cmd.data = raw;
            } else if (key == "id") {
                cmd.id = raw;
            }
            s.ws();
            if (s.p < s.end && *s.p == ',') {
                s.p++;
                continue;
            }
            if (s.p < s.end && *s.p == '}') {
                s.p++;
                break;
            }
            return false;
        }
    }
    s.ws();
    return s.p == s.end;
}

// ringcast's topic rules: [A-Za-z0-9_.:-], 1 to 255 bytes, no empty
// dot-separated segment. Such a name needs no JSON escaping.
const char *topic_error(const Command &cmd) {
    if (!cmd.has_topic) return "missing string field `topic`";
    std::string_view t = cmd.topic;
    if (cmd.topic_escaped) return "topic may only contain A-Z a-z 0-9 _ . : -";
    if (t.empty()) return "topic is empty";
    if (t.size() > 255) return "topic is longer than 255 bytes";
    char prev = '.';
    for (char c : t) {
        if (!(std::isalnum((unsigned char) c) || c == '_' || c == '.' || c == ':' || c == '-'))
            return "topic may only contain A-Z a-z 0-9 _ . : -";
        if (c == '.' && prev == '.') return "topic has an empty dot-separated segment";
        prev = c;
    }
    if (prev == '.') return "topic has an empty dot-separated segment";
    return nullptr;
}

struct PerSocket {};

using App = uWS::App;
using WS = uWS::WebSocket<false, true, PerSocket>;

App *app;
std::string epoch;
// Per topic: the last seq assigned (no history is kept).
std::unordered_map<std::string, uint64_t> seqs;
std::string out;

void with_id(const Command &cmd) {
    if (!cmd.id.empty()) {
        out += ",\"id\":";
        out += cmd.id;
    }
    out += '}';
}

void reply_error(WS *ws, const char *code, std::string_view message, const Command *cmd) {
    out.assign("{\"op\":\"error\",\"code\":\"");
    out += code;
    out += "\",\"message\":\"";
    for (char c : message) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    out += '"';
    if (cmd) {
        with_id(*cmd);
    } else {
        out += '}';
    }
    ws->send(out, uWS::OpCode::TEXT);
}

void on_message(WS *ws, std::string_view frame, uWS::OpCode opcode) {
    if (opcode != uWS::OpCode::TEXT) {
        reply_error(ws, "bad_json", "binary messages are not commands", nullptr);
        return;
    }
    Command cmd;
    if (!parse_command(frame, cmd)) {
        reply_error(ws, "bad_json", "not a JSON object", nullptr);
        return;
    }
    if (!cmd.has_op) {
        reply_error(ws, "bad_request", "missing string field `op`", &cmd);
        return;
    }
    bool sub = cmd.op == "subscribe", unsub = cmd.op == "unsubscribe", publish = cmd.op == "publish";
    if (!sub && !unsub && !publish) {
        reply_error(ws, "unknown_op", "unknown op", &cmd);
        return;
    }
    if (const char *why = topic_error(cmd)) {
        reply_error(ws, cmd.has_topic ? "bad_topic" : "bad_request", why, &cmd);
        return;
    }
    if (sub || unsub) {
        if (sub) {
            ws->subscribe(cmd.topic);
        } else {
            ws->unsubscribe(cmd.topic);
        }
        out.assign(sub ? "{\"op\":\"subscribed\",\"topic\":\"" : "{\"op\":\"unsubscribed\",\"topic\":\"");
        out += cmd.topic;
        out += '"';
        if (sub) {
            out += ",\"epoch\":\"";
            out += epoch;
            out += '"';
        }
        with_id(cmd);
        ws->send(out, uWS::OpCode::TEXT);
        return;
    }
    if (cmd.data.empty()) {
        reply_error(ws, "bad_request", "missing field `data`", &cmd);
        return;
    }
    auto it = seqs.find(std::string(cmd.topic));
    if (it == seqs.end()) it = seqs.emplace(std::string(cmd.topic), 0).first;
    uint64_t seq = ++it->second;
    std::string seq_text = std::to_string(seq);
    // Encoded once; the topic tree sends it to every subscriber (the
    // publisher included, if it is one, as ringcast does).
    out.assign("{\"op\":\"message\",\"topic\":\"");
    out += cmd.topic;
    out += "\",\"seq\":";
    out += seq_text;
    out += ",\"data\":";
    out += cmd.data;
    out += '}';
    app->publish(cmd.topic, out, uWS::OpCode::TEXT);
    if (!cmd.id.empty()) {
        out.assign("{\"op\":\"published\",\"topic\":\"");
        out += cmd.topic;
        out += "\",\"seq\":";
        out += seq_text;
        with_id(cmd);
        ws->send(out, uWS::OpCode::TEXT);
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s PORT (listens on 127.0.0.1:PORT)\n", argv[0]);
        return 2;
    }
    int port = std::atoi(argv[1]);
    std::random_device rd;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%08x%08x", rd(), rd());
    epoch = hex;

    App a;
    app = &a;
    a.get("/healthz", [](auto *res, auto * /*req*/) { res->end("ok"); })
        .ws<PerSocket>("/ws", {
            .compression = uWS::DISABLED,
            // ringcast's --max-message-size.
            .maxPayloadLength = 16 * 1024 * 1024,
            // Pings after a quiet spell, a close when the peer stays
            // silent (ringcast: 30 s ping, 75 s idle timeout).
            .idleTimeout = 120,
            // A subscriber that cannot keep up is closed, not silently
            // skipped (uWebSockets' default drops the messages).
            .maxBackpressure = 1024 * 1024,
            .closeOnBackpressureLimit = true,
            .resetIdleTimeoutOnSend = false,
            .sendPingsAutomatically = true,
            .message = on_message,
        })
        .listen("127.0.0.1", port, [port](auto *listen_socket) {
            if (!listen_socket) {
                std::fprintf(stderr, "uws-peer: cannot listen on 127.0.0.1:%d\n", port);
                std::exit(1);
            }
            std::fprintf(stderr, "uws-peer: listening on 127.0.0.1:%d\n", port);
        })
        .run();
    return 0;
}
