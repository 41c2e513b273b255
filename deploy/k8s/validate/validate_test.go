package validate

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestRendered validates the rendering named by LYCHEE_RENDERED (scripts/check_deploy.sh sets it, and
// LYCHEE_EXPECT_GPUS, the GPU limit the value set asks for).
func TestRendered(t *testing.T) {
	path := os.Getenv("LYCHEE_RENDERED")
	if path == "" {
		t.Skip("LYCHEE_RENDERED is not set (scripts/check_deploy.sh sets it)")
	}
	wantGPUs := -1
	if v := os.Getenv("LYCHEE_EXPECT_GPUS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("LYCHEE_EXPECT_GPUS=%q: %v", v, err)
		}
		wantGPUs = n
	}
	stream, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(stream)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, err := range Check(m, wantGPUs) {
		t.Errorf("%s: %v", path, err)
	}
}

func fixture(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mutate(t *testing.T, old, new string) string {
	t.Helper()
	s := fixture(t)
	if !strings.Contains(s, old) {
		t.Fatalf("fixture lacks %q; re-render testdata/default.yaml or update the test", old)
	}
	return strings.Replace(s, old, new, 1)
}

func problems(t *testing.T, stream string) string {
	t.Helper()
	m, err := Decode([]byte(stream))
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range Check(m, 1) {
		out = append(out, e.Error())
	}
	return strings.Join(out, "\n")
}

func TestFixturePasses(t *testing.T) {
	if p := problems(t, fixture(t)); p != "" {
		t.Fatal(p)
	}
}

// The secure rendering (ci/secure-values.yaml: mutual TLS) probes over the plaintext health-only port;
// without that port the kubelet could not probe at all.
func TestMutualTLSProbesUseTheHealthPort(t *testing.T) {
	b, err := os.ReadFile("testdata/secure.yaml")
	if err != nil {
		t.Fatal(err)
	}
	secure := string(b)
	if p := problems(t, secure); p != "" {
		t.Fatalf("the secure fixture fails: %s", p)
	}
	for _, c := range []struct{ name, old, new, want string }{
		{"no health port", "            - name: health\n              containerPort: 50052\n              protocol: TCP\n", "",
			"under mutual TLS the kubelet cannot present a client certificate"},
		{"probe on the TLS port", "              port: 50052\n              service: \"\"", "              port: 50051\n              service: \"\"",
			"liveness probe is on port 50051, want 50052"},
		{"health port not the one served", "value: \"50052\"", "value: \"50053\"", "LYCHEE_HEALTH_PORT=\"50053\""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(secure, c.old) {
				t.Fatalf("testdata/secure.yaml lacks %q; re-render it (helm template ... -f ci/secure-values.yaml)", c.old)
			}
			if p := problems(t, strings.Replace(secure, c.old, c.new, 1)); !strings.Contains(p, c.want) {
				t.Fatalf("want a problem containing %q, got:\n%s", c.want, p)
			}
		})
	}
}

func TestBreakages(t *testing.T) {
	cases := []struct{ name, old, new, want string }{
		{"unknown field", "readinessProbe:", "readinesProbe:", `unknown field "readinesProbe"`},
		{"unknown kind", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgett", "unknown apiVersion/kind"},
		{"duplicate key", "  replicas: 1\n", "  replicas: 1\n  replicas: 2\n", "already set in map"},
		{"headless with a cluster IP", "clusterIP: None", "clusterIP: 10.0.0.10", "want None"},
		{"short termination grace", "terminationGracePeriodSeconds: 50", "terminationGracePeriodSeconds: 30",
			"terminationGracePeriodSeconds must exceed"},
		{"readiness on the wrong service", "service: lychee.v1.RerankService\n            failureThreshold: 2",
			"service: \"\"\n            failureThreshold: 2", "readiness probe must ask for health of service"},
		{"probe on the wrong port", "port: 50051\n              service: \"\"", "port: 8080\n              service: \"\"",
			"liveness probe is on port 8080, want 50051"},
		{"no GPU limit", "              nvidia.com/gpu: 1\n", "", "GPU limit nvidia.com/gpu is 0, want 1"},
		{"short startup", "failureThreshold: 180", "failureThreshold: 60", "startup probe allows 600 s"},
		{"root", "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if p := problems(t, mutate(t, c.old, c.new)); !strings.Contains(p, c.want) {
				t.Fatalf("want a problem containing %q, got:\n%s", c.want, p)
			}
		})
	}
}
