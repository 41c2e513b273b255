package lychee

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/credentials"
)

// WithBearerToken sends "authorization: Bearer <token>" on every call. The
// token travels only over a connection with transport security (WithTLS,
// WithTransportCredentials, or a local Unix-socket credential): New refuses it
// on a plaintext connection unless AllowBearerTokenOverPlaintext is also given,
// because a token sent in clear text can be read by anyone on the path.
func WithBearerToken(token string) Option {
	return func(c *config) { c.bearerToken, c.bearerTokenSet = token, true }
}

// AllowBearerTokenOverPlaintext lets WithBearerToken send its token over a
// plaintext connection. Use it only where the path cannot be observed: a
// sidecar on loopback, a test.
func AllowBearerTokenOverPlaintext() Option {
	return func(c *config) { c.tokenOverPlaintext = true }
}

// bearerToken implements credentials.PerRPCCredentials.
type bearerToken struct {
	header     string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.header}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

// tokenCredentials checks the token and the transport it will travel on.
func tokenCredentials(cfg *config) (credentials.PerRPCCredentials, error) {
	if err := checkToken(cfg.bearerToken); err != nil {
		return nil, err
	}
	plaintext := cfg.creds.Info().SecurityProtocol == "insecure"
	if plaintext && !cfg.tokenOverPlaintext {
		return nil, errors.New("lychee: WithBearerToken on a plaintext connection would send the token in clear " +
			"text; use WithTLS, or add AllowBearerTokenOverPlaintext() for a loopback sidecar or a test")
	}
	return bearerToken{header: "Bearer " + cfg.bearerToken, requireTLS: !plaintext}, nil
}

// checkToken refuses tokens that cannot be an HTTP/2 header value; gRPC would
// otherwise fail every call with an obscure internal error.
func checkToken(token string) error {
	if token == "" {
		return errors.New("lychee: WithBearerToken: empty token")
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("lychee: WithBearerToken: token has a byte 0x%02x at %d; "+
				"only visible ASCII is allowed in a bearer token", c, i)
		}
	}
	return nil
}
