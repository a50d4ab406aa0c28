// Logging in. The page first asks the server who it is; when the server wants a user, the
// login form comes first, and the dashboard starts once the server has set the session
// cookie (HttpOnly: the page never sees it). Logging out ends the session on the server.

/** Who the page is to the server: {user, role, signed_in, login_required, can_log_in}. */
export async function signIn(els) {
  const me = await (await fetch('/api/v1/auth/me')).json();
  if (!me.login_required) return me;
  els.screen.hidden = false;
  els.user.focus();
  return new Promise((resolve) => {
    els.form.addEventListener('submit', async (e) => {
      e.preventDefault();
      els.error.textContent = '';
      const response = await fetch('/api/v1/auth/login', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: els.user.value, password: els.password.value }),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        els.error.textContent = answer.error || `login failed (${response.status})`;
        els.password.select();
        return;
      }
      els.password.value = '';
      els.screen.hidden = true;
      resolve(answer);
    });
  });
}

/** The signed-in user in the header, with a button that logs out. */
export function showUser(me, els) {
  if (!me.signed_in) return;
  els.who.textContent = `${me.user} (${me.role})`;
  els.who.hidden = false;
  els.logout.hidden = false;
  els.logout.addEventListener('click', async () => {
    await fetch('/api/v1/auth/logout', { method: 'POST' });
    location.reload();
  });
}
