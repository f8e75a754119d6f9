"""Below the DAO: database deadlines and the circuit breaker, migrations, a private MariaDB."""
