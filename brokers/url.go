package brokers

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// Kind names a broker.
type Kind string

// The brokers Open can connect to.
const (
	// GoChannel is Watermill's in-process Pub/Sub, the default.
	GoChannel Kind = "gochannel"
	// AMQP is RabbitMQ (package brokers/amqp).
	AMQP Kind = "amqp"
	// NATS is NATS JetStream (package brokers/natsjs).
	NATS Kind = "nats"
	// Redis is Redis Streams (package brokers/redisstream).
	Redis Kind = "redis"
	// Kafka is Apache Kafka (package brokers/kafka).
	Kafka Kind = "kafka"
)

// Schemes lists the URL schemes ParseURL accepts, for help texts.
const Schemes = "amqp://, amqps://, nats://, redis://, rediss://, kafka://, gochannel://, or no URL for gochannel"

// ErrInvalidURL wraps every problem ParseURL finds.
var ErrInvalidURL = errors.New("invalid broker URL")

// Config says which broker to use and where it is. Get one from ParseURL.
type Config struct {
	// Kind is the broker.
	Kind Kind
	// URL is the URL as given; the broker clients connect with it. Empty for
	// GoChannel.
	URL string
	// Addrs are the broker addresses (host:port) the URL names, for log
	// lines and error messages; empty for GoChannel.
	Addrs []string
	// KafkaBrokers are the Kafka bootstrap brokers (host:port) of a kafka://
	// URL.
	KafkaBrokers []string
	// Redis holds the client options of a redis:// URL.
	Redis *redis.Options
}

// String describes the broker without credentials, for log lines.
func (c Config) String() string {
	if c.Kind == GoChannel {
		return "gochannel (in-process)"
	}
	return fmt.Sprintf("%s at %s", c.Kind, strings.Join(c.Addrs, ","))
}

// ParseURL turns a BROKER_URL into a Config. The empty string and
// gochannel:// select the in-process GoChannel. Every other URL must have a
// supported scheme and name at least one host; a port, when given, must be
// a number from 1 to 65535. The error wraps ErrInvalidURL and never
// contains the URL's password.
func ParseURL(raw string) (Config, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return Config{Kind: GoChannel}, nil
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || scheme == "" {
		return Config{}, fmt.Errorf("%w %q: no scheme (use %s)", ErrInvalidURL, redact(raw), Schemes)
	}
	switch strings.ToLower(scheme) {
	case "gochannel":
		if rest != "" {
			return Config{}, fmt.Errorf("%w %q: gochannel:// takes no host or path", ErrInvalidURL, raw)
		}
		return Config{Kind: GoChannel}, nil
	case "amqp", "amqps":
		return parseAMQP(raw)
	case "nats", "tls":
		return parseNATS(raw)
	case "redis", "rediss":
		return parseRedis(raw)
	case "kafka":
		return parseKafka(raw, rest)
	}
	return Config{}, fmt.Errorf("%w %q: unsupported scheme %q (use %s)", ErrInvalidURL, redact(raw), scheme, Schemes)
}

func parseAMQP(raw string) (Config, error) {
	port := 5672
	if strings.HasPrefix(strings.ToLower(raw), "amqps:") {
		port = 5671
	}
	u, err := parseHostURL(raw, port)
	if err != nil {
		return Config{}, err
	}
	// The AMQP client's own parser decides the rest (vhost, credentials).
	if _, err := amqp091.ParseURI(raw); err != nil {
		return Config{}, fmt.Errorf("%w %q: %v", ErrInvalidURL, redact(raw), err)
	}
	return Config{Kind: AMQP, URL: raw, Addrs: []string{u.Host}}, nil
}

func parseNATS(raw string) (Config, error) {
	u, err := parseHostURL(raw, 4222)
	if err != nil {
		return Config{}, err
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return Config{}, fmt.Errorf("%w %q: a nats:// URL has no path (got %q)", ErrInvalidURL, redact(raw), u.Path)
	}
	return Config{Kind: NATS, URL: raw, Addrs: []string{u.Host}}, nil
}

func parseRedis(raw string) (Config, error) {
	u, err := parseHostURL(raw, 6379)
	if err != nil {
		return Config{}, err
	}
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return Config{}, fmt.Errorf("%w %q: %v", ErrInvalidURL, redact(raw), err)
	}
	return Config{Kind: Redis, URL: raw, Addrs: []string{u.Host}, Redis: opts}, nil
}

// parseKafka parses kafka://host[:port][,host[:port]...]: a list of
// bootstrap brokers, default port 9092. Query parameters and paths are
// rejected, so a typo is not silently ignored.
func parseKafka(raw, rest string) (Config, error) {
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		if strings.Trim(rest[i:], "/") != "" {
			return Config{}, fmt.Errorf("%w %q: a kafka:// URL is a comma-separated list of host:port and nothing else", ErrInvalidURL, raw)
		}
		rest = rest[:i]
	}
	if strings.Contains(rest, "@") {
		return Config{}, fmt.Errorf("%w %q: credentials in kafka:// URLs are not supported", ErrInvalidURL, redact(raw))
	}
	if rest == "" {
		return Config{}, fmt.Errorf("%w %q: no broker address (use kafka://host:9092[,host2:9092])", ErrInvalidURL, raw)
	}
	var brokers []string
	for _, hp := range strings.Split(rest, ",") {
		addr, err := hostPort(hp, 9092)
		if err != nil {
			return Config{}, fmt.Errorf("%w %q: %v", ErrInvalidURL, raw, err)
		}
		brokers = append(brokers, addr)
	}
	return Config{Kind: Kafka, URL: raw, Addrs: brokers, KafkaBrokers: brokers}, nil
}

// parseHostURL parses raw as a URL that must name a host, and fills in
// defaultPort when it names none.
func parseHostURL(raw string, defaultPort int) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL; say what is wrong without it.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidURL, redact(raw), err)
	}
	addr, err := hostPort(u.Host, defaultPort)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidURL, redact(raw), err)
	}
	u.Host = addr
	return u, nil
}

// hostPort checks "host[:port]" and returns "host:port".
func hostPort(hp string, defaultPort int) (string, error) {
	if hp == "" {
		return "", errors.New("no host")
	}
	host, port := hp, ""
	if h, p, err := net.SplitHostPort(hp); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(hp, "[") && strings.HasSuffix(hp, "]") {
		host = hp[1 : len(hp)-1] // an IPv6 address without a port
	} else if strings.Contains(hp, ":") {
		return "", fmt.Errorf("bad host:port %q", hp)
	}
	if host == "" {
		return "", fmt.Errorf("no host in %q", hp)
	}
	if port == "" {
		port = strconv.Itoa(defaultPort)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("bad port %q in %q", port, hp)
	}
	return net.JoinHostPort(host, port), nil
}

// redact removes the password from a URL for messages; a URL that does not
// parse is shown up to its host part at most.
func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		if _, ok := u.User.Password(); ok {
			return u.Redacted()
		}
		return raw
	}
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "xxxxx" + raw[i:]
		}
	}
	return raw
}
