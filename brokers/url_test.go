package brokers

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url   string
		kind  Kind
		addrs []string
	}{
		{"", GoChannel, nil},
		{"  ", GoChannel, nil},
		{"gochannel://", GoChannel, nil},
		{"amqp://guest:guest@127.0.0.1:5672/", AMQP, []string{"127.0.0.1:5672"}},
		{"amqp://rabbit", AMQP, []string{"rabbit:5672"}},
		{"amqp://u:p@rabbit:5673/vhost", AMQP, []string{"rabbit:5673"}},
		{"amqps://u:p@rabbit/", AMQP, []string{"rabbit:5671"}},
		{"AMQP://rabbit", AMQP, []string{"rabbit:5672"}},
		{"nats://127.0.0.1:4222", NATS, []string{"127.0.0.1:4222"}},
		{"nats://nats", NATS, []string{"nats:4222"}},
		{"nats://token@nats:4223/", NATS, []string{"nats:4223"}},
		{"tls://nats:4222", NATS, []string{"nats:4222"}},
		{"redis://127.0.0.1:6379/0", Redis, []string{"127.0.0.1:6379"}},
		{"redis://:secret@redis", Redis, []string{"redis:6379"}},
		{"rediss://redis:6380/2", Redis, []string{"redis:6380"}},
		{"redis://[::1]:6379", Redis, []string{"[::1]:6379"}},
		{"kafka://127.0.0.1:9092", Kafka, []string{"127.0.0.1:9092"}},
		{"kafka://k1,k2:9093,k3:9094", Kafka, []string{"k1:9092", "k2:9093", "k3:9094"}},
		{"kafka://k1:9092/", Kafka, []string{"k1:9092"}},
		{"kafka://[::1]:9092,[::1]", Kafka, []string{"[::1]:9092", "[::1]:9092"}},
	} {
		t.Run(tc.url, func(t *testing.T) {
			t.Parallel()
			c, err := ParseURL(tc.url)
			require.NoError(t, err)
			require.Equal(t, tc.kind, c.Kind)
			require.Equal(t, tc.addrs, c.Addrs)
			switch c.Kind {
			case GoChannel:
				require.Empty(t, c.URL)
				require.Equal(t, "gochannel (in-process)", c.String())
			case Kafka:
				require.Equal(t, tc.addrs, c.KafkaBrokers)
			case Redis:
				require.NotNil(t, c.Redis)
				require.Equal(t, tc.addrs[0], c.Redis.Addr)
			}
			if c.Kind != GoChannel {
				require.Equal(t, tc.url, c.URL, "the clients connect with the URL as given")
				require.Equal(t, string(c.Kind)+" at "+strings.Join(tc.addrs, ","), c.String())
			}
		})
	}
}

func TestParseURLRedisOptions(t *testing.T) {
	t.Parallel()
	c, err := ParseURL("redis://user:pw@redis:6380/3")
	require.NoError(t, err)
	require.Equal(t, 3, c.Redis.DB)
	require.Equal(t, "user", c.Redis.Username)
	require.Equal(t, "pw", c.Redis.Password)
	require.NotContains(t, c.String(), "pw")
}

func TestParseURLRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, want string }{
		{"localhost:5672", "no scheme"},
		{"://host", "no scheme"},
		{"rabbitmq", "no scheme"},
		{"foo://x", `unsupported scheme "foo"`},
		{"http://broker:80", `unsupported scheme "http"`},
		{"gochannel://x", "takes no host"},
		{"amqp://", "no host"},
		{"amqp:///vhost", "no host"},
		{"amqp://host:abc", "invalid port"},
		{"amqp://host:0", "bad port"},
		{"amqp://host:70000", "bad port"},
		{"amqp://host name", "invalid character"},
		{"nats://", "no host"},
		{"nats://nats:4222/path", "no path"},
		{"redis://", "no host"},
		{"redis://redis/abc", "invalid database number"},
		{"kafka://", "no broker address"},
		{"kafka://,", "no host"},
		{"kafka://k1,,k2", "no host"},
		{"kafka://k1:x", `bad port "x"`},
		{"kafka://k1:9092?tls=1", "nothing else"},
		{"kafka://k1/topic", "nothing else"},
		{"kafka://u:p@k1", "credentials"},
		{"kafka://:9092", "no host"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			t.Parallel()
			_, err := ParseURL(tc.url)
			require.ErrorIs(t, err, ErrInvalidURL)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n", "one line")
		})
	}
}

func TestParseURLHidesPasswords(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"amqp://user:s3cret@host:abc/",
		"redis://:s3cret@redis/abc",
		"nats://user:s3cret@nats:4222/path",
		"foo://user:s3cret@host",
		"kafka://user:s3cret@k1",
	} {
		_, err := ParseURL(u)
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), "s3cret", u)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"", "amqp://guest:guest@127.0.0.1:5672/", "nats://n:4222", "redis://r/0", "kafka://a,b:1", "x://", "kafka://[::1]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := ParseURL(raw)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidURL)
			return
		}
		require.NotEmpty(t, c.Kind)
		if c.Kind != GoChannel {
			require.NotEmpty(t, c.Addrs)
		}
	})
}
